"""The Dreamer's deterministic half: visual descriptors only, only who the prose shows, seeds, LoRAs, size."""

from __future__ import annotations

import random

from app.comfy.inject import LoraSpec
from app.narrates.agents.dreamer import build_plan, depicted, scene_tags
from app.narrates.model import Character, SessionSettings, StylePreset

MIRA = Character(
    "Mira",
    "ZEALOUS and secretive",
    "silver hair, green eyes",
    ("the cartographer",),
    (LoraSpec("mira.safetensors", 0.8),),
    seed=42,
)
TOBIAS = Character(
    "Tobias", "grumpy keeper", "old man, grey beard", loras=(LoraSpec("style.safetensors", 0.3),)
)


def test_only_characters_the_prose_names_are_depicted():
    prose = "The cartographer lifts the lantern."
    assert depicted(["Mira", "Tobias"], prose, [MIRA, TOBIAS]) == (MIRA,)
    assert depicted([], prose, [MIRA, TOBIAS], fallback=["Tobias", "Mira"]) == (MIRA,)
    assert depicted(["Tobias"], prose, [MIRA, TOBIAS]) == ()
    # names the model made up do not count
    assert depicted(["the island"], prose, [MIRA, TOBIAS]) == (MIRA,)
    # the model named nobody and the beat had no one: whoever the prose names
    assert (
        depicted([], "The keeper waves.", [MIRA, Character("Tobias", aliases=("the keeper",))])[0].name
        == "Tobias"
    )


def test_the_prompt_uses_visual_descriptors_never_the_description():
    settings = SessionSettings(
        prefix="masterpiece", negative="lowres", styles={"anime": StylePreset("anime style", "3d")}
    )
    plan = build_plan(
        tags="lighthouse, storm",
        framing="wide",
        cast=[MIRA],
        settings=settings,
        style="anime",
        rng=random.Random(1),
    )
    assert plan.positive == "masterpiece, anime style, silver hair, green eyes, lighthouse, storm"
    assert "ZEALOUS" not in plan.positive and plan.negative == "lowres, 3d"
    assert plan.characters == ("Mira",) and plan.framing == "wide"


def test_scene_tags_drop_character_names_and_duplicates():
    assert scene_tags("Mira, lighthouse,  lighthouse , the cartographer, rain.", [MIRA]) == "lighthouse, rain"


def test_sentences_copied_from_the_prose_are_not_tags():
    copied = "The island of Vell... I'm not sure what to make of it, lighthouse, stormy night sky"
    assert scene_tags(copied, [MIRA]) == "The island of Vell, lighthouse, stormy night sky"


def test_a_garbage_action_falls_back_to_the_players_words():
    from app.narrates.agents.preprocessor import plausible_action

    text = "I knock on the keeper's door"
    assert plausible_action("narrative_the_lighthouse.json", text) == text
    assert plausible_action("You read a poem about cheese.", text) == text
    assert plausible_action("You knock on the keeper's door.", text) == "You knock on the keeper's door."


def test_seed_policies():
    rng = random.Random(3)
    common = dict(tags="x", framing="scene", style=None, rng=rng)
    assert build_plan(cast=[MIRA], settings=SessionSettings(seed_policy="random"), **common).seed is None
    assert (
        build_plan(cast=[TOBIAS, MIRA], settings=SessionSettings(seed_policy="character"), **common).seed
        == 42
    )
    assert build_plan(cast=[MIRA], settings=SessionSettings(seed_policy="scene", seed=9), **common).seed == 9
    drawn = build_plan(cast=[TOBIAS], settings=SessionSettings(seed_policy="character"), **common).seed
    assert isinstance(drawn, int)


def test_size_is_the_templates_own_unless_the_session_sets_one_and_loras_merge():
    styles = {
        "anime": StylePreset(loras=(LoraSpec("style.safetensors", 0.9), LoraSpec("anime.safetensors", 0.6)))
    }
    plan = build_plan(
        tags="x",
        framing="scene",
        cast=[MIRA, TOBIAS],
        settings=SessionSettings(styles=styles),
        style="anime",
        rng=random.Random(0),
    )
    assert plan.width is None and plan.height is None
    assert [x.name for x in plan.loras] == ["mira.safetensors", "style.safetensors", "anime.safetensors"]
    assert plan.loras[1].strength_model == 0.3  # the character's own strength wins
    sized = build_plan(
        tags="x",
        framing="scene",
        cast=[],
        settings=SessionSettings(width=832, height=1216),
        style=None,
        rng=random.Random(0),
    )
    assert (sized.width, sized.height) == (832, 1216)


def test_prose_cut_by_the_token_limit_ends_at_its_last_full_sentence():
    from app.narrates.agents.writer import trim_unfinished

    assert trim_unfinished('You wait. "Who is there?" The door creaks and') == 'You wait. "Who is there?"'
    assert (
        trim_unfinished("A single unfinished thought that goes on and")
        == "A single unfinished thought that goes on and"
    )
    assert trim_unfinished("Short. Then a very long tail that keeps going without any end at all so") == (
        "Short. Then a very long tail that keeps going without any end at all so"
    )
