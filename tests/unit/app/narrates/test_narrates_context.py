"""The context budget: lore by keyword, the cast first by presence, recent turns until the budget, the rest to summarize."""

from __future__ import annotations

from app.narrates.context import TokenBudget, mentions
from app.narrates.model import Character, WorldNote
from app.narrates.store import TurnRecord


async def words(text: str) -> int:
    return len(text.split())


def turn(position: int, prose: str) -> TurnRecord:
    return TurnRecord(
        position,
        1,
        position,
        1,
        True,
        False,
        "done",
        f"input {position}",
        prose,
        False,
        None,
        None,
        None,
        0.0,
        0.0,
    )


async def test_world_notes_trigger_by_keyword_and_constant_ones_always_apply():
    budget = TokenBudget(words)
    notes = [
        WorldNote("Lamp", "dark", ("lamp",), 1),
        WorldNote("Sea", "cold", ()),
        WorldNote("Crypt", "deep", ("crypt",)),
    ]
    context = await budget.build(
        context_tokens=2048,
        response_tokens=100,
        characters=[],
        world=notes,
        summary="",
        summary_through=0,
        timeline=[turn(1, "You see the LAMP.")],
        scan_extra="",
    )
    assert context.world_included == ("Sea", "Lamp")


async def test_old_turns_that_do_not_fit_are_handed_to_the_summary():
    budget = TokenBudget(words)
    timeline = [turn(i, "word " * 100) for i in range(1, 9)]
    context = await budget.build(
        context_tokens=350 + 100 + 330,
        response_tokens=100,
        characters=[],
        world=[],
        summary="",
        summary_through=2,
        timeline=timeline,
    )
    assert context.turns_included == (6, 7, 8)
    assert [t.position for t in context.to_summarize] == [3, 4, 5]


async def test_present_characters_come_first():
    cast = [Character("Tobias", "keeper"), Character("Mira", "cartographer", aliases=("the kid",))]
    context = await TokenBudget(words).build(
        context_tokens=2048,
        response_tokens=100,
        characters=cast,
        world=[],
        summary="",
        summary_through=0,
        timeline=[],
        scan_extra="ask the kid",
    )
    assert context.present == ("Mira",) and context.cast.splitlines()[0].startswith("- Mira")


def test_mentions_matches_whole_words_only():
    assert mentions("Mira's lamp", ["Mira"]) and not mentions("Miranda", ["Mira"])
