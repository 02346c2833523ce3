"""The context budget: what of the story the text stages see, within the model's context.

Order and budget follow what SillyTavern, KoboldCpp and AI Dungeon users expect:
the cast (characters named in the recent text first),
world notes triggered by keyword (lorebook style: a note without keys is always on; highest
priority first), the rolling summary of older turns, then recent turns newest first until the
budget is used. Turns that no longer fit and are not yet in the summary are returned as
``to_summarize`` so the pipeline can fold them into the summary before the turn runs.

Token counts come from the LLM client (the server's tokenizer where it has one, an estimate
otherwise) through ``count``; counts are cached per text for the life of a :class:`TokenBudget`.
Pure asyncio; runs on the caller's loop.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from app.narrates.model import Character, WorldNote
from app.narrates.store import TurnRecord

TokenCounter = Callable[[str], Awaitable[int]]

RESERVED_FOR_PROMPT = 350  # the prompt files' own text, the beat and the action
SCAN_TURNS = 2  # how many recent turns world-note keys are searched in


@dataclass(frozen=True)
class BudgetShares:
    """Fractions of the available tokens each part may use at most (recent turns get the rest)."""

    cast: float = 0.25
    world: float = 0.2
    summary: float = 0.15


@dataclass(frozen=True)
class StoryContext:
    """The filled-in context parts, as prompt text, plus what was left out."""

    cast: str
    world: str
    summary: str
    recent: str
    present: tuple[str, ...]  # cast names found in the recent text and the input
    world_included: tuple[str, ...]
    turns_included: tuple[int, ...]  # positions
    to_summarize: tuple[TurnRecord, ...]
    tokens: int


@functools.lru_cache(maxsize=4096)
def _names_pattern(names: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True) if n)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if alternatives else None


def mentions(text: str, names: Sequence[str]) -> bool:
    """True when one of ``names`` occurs in ``text`` as a whole word (case-insensitive)."""
    pattern = _names_pattern(tuple(names))
    return bool(pattern and pattern.search(text))


def turn_text(turn: TurnRecord) -> str:
    return f"> {turn.player_input}\n{(turn.prose or '').strip()}"


class TokenBudget:
    """Counts tokens with a cache; one per story service."""

    def __init__(self, count: TokenCounter) -> None:
        self._count = count
        self._cache: dict[str, int] = {}

    async def tokens(self, text: str) -> int:
        if not text:
            return 0
        if text not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[text] = await self._count(text)
        return self._cache[text]

    async def build(
        self,
        *,
        context_tokens: int,
        response_tokens: int,
        characters: Sequence[Character],
        world: Sequence[WorldNote],
        summary: str,
        summary_through: int,
        timeline: Sequence[TurnRecord],
        scan_extra: str = "",
        shares: BudgetShares = BudgetShares(),
    ) -> StoryContext:
        available = max(64, context_tokens - response_tokens - RESERVED_FOR_PROMPT)
        recent_scan = "\n".join(turn_text(t) for t in timeline[-SCAN_TURNS:]) + "\n" + scan_extra
        used = 0

        present = tuple(c.name for c in characters if mentions(recent_scan, c.names()))
        ordered = sorted(characters, key=lambda c: c.name not in present)
        cast_lines, cast_used = [], 0
        for character in ordered:
            aka = f" (also: {', '.join(character.aliases)})" if character.aliases else ""
            line = f"- {character.name}{aka}: {character.description or character.visual}".rstrip(": ")
            cost = await self.tokens(line)
            if cast_used + cost > available * shares.cast:
                continue
            cast_lines.append(line)
            cast_used += cost
        used += cast_used

        triggered = [n for n in world if n.constant or mentions(recent_scan, n.keys)]
        triggered.sort(key=lambda n: (not n.constant, -n.priority))
        world_lines, world_names, world_used = [], [], 0
        for note in triggered:
            line = f"- {note.title}: {note.content}"
            cost = await self.tokens(line)
            if world_used + cost > available * shares.world:
                continue
            world_lines.append(line)
            world_names.append(note.title)
            world_used += cost
        used += world_used

        summary_text = summary.strip()
        summary_cost = await self.tokens(summary_text)
        if summary_cost > available * shares.summary:
            # keep the newest part of an over-long summary (the operator can shorten it)
            summary_text = (
                "…" + summary_text[-int(len(summary_text) * available * shares.summary / summary_cost) :]
            )
            summary_cost = await self.tokens(summary_text)
        used += summary_cost

        recent: list[TurnRecord] = []
        for turn in reversed(timeline):
            cost = await self.tokens(turn_text(turn))
            if used + cost > available and recent:
                break
            if used + cost > available:  # even the last turn is too long: keep its end
                break
            recent.append(turn)
            used += cost
        recent.reverse()
        first_recent = recent[0].position if recent else (timeline[-1].position + 1 if timeline else 1)
        to_summarize = tuple(t for t in timeline if summary_through < t.position < first_recent)
        return StoryContext(
            cast="\n".join(cast_lines) or "(none)",
            world="\n".join(world_lines) or "(none)",
            summary=summary_text or "(nothing yet)",
            recent="\n\n".join(turn_text(t) for t in recent) or "(this is the first turn)",
            present=present,
            world_included=tuple(world_names),
            turns_included=tuple(t.position for t in recent),
            to_summarize=to_summarize,
            tokens=used,
        )
