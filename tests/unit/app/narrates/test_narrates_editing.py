"""Form text ↔ typed records for the story panel: LoRAs, characters, notes, re-render changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.comfy.inject import LoraSpec
from app.narrates.editing import (
    character_from_fields,
    form_for,
    loras_from_text,
    loras_to_text,
    note_from_fields,
    rerender_changes,
)
from app.narrates.errors import InvalidEdit
from app.narrates.model import ScenePlan

PLAN = ScenePlan(
    "lighthouse, night", "blurry", ("Mira",), "scene", "anime", "sdxl_txt2img", 512, 768, 42, "scene",
    loras=(LoraSpec("mira.safetensors", 0.8),),
)  # fmt: skip


def test_loras_round_trip_through_the_short_form():
    loras = (LoraSpec("a.safetensors", 0.8, 0.6), LoraSpec("b.safetensors", 1.0))
    assert loras_from_text(loras_to_text(loras)) == loras
    assert loras_from_text("  ") == ()
    with pytest.raises(InvalidEdit, match="name:strength"):
        loras_from_text("a.safetensors:strong")


def test_character_and_note_fields_are_checked_by_name():
    mira = character_from_fields(
        " Mira ", "the cartographer, M", "brave", "silver hair", "m.safetensors:0.7", "12"
    )
    assert (mira.name, mira.aliases, mira.seed) == ("Mira", ("the cartographer", "M"), 12)
    with pytest.raises(InvalidEdit, match="character Mira: the seed"):
        character_from_fields("Mira", "", "", "", "", "twelve")
    with pytest.raises(InvalidEdit, match="no name"):
        character_from_fields(" ", "", "", "", "", "")
    assert note_from_fields("Lamp", "lamp, light", "3", "dark").keys == ("lamp", "light")
    with pytest.raises(InvalidEdit, match="priority"):
        note_from_fields("Lamp", "", "high", "")


def test_an_untouched_form_keeps_everything_and_new_seed_draws_one():
    form = form_for(PLAN, None)
    assert rerender_changes(PLAN, form) == {}
    assert rerender_changes(PLAN, replace(form, seed_mode="new")) == {"seed": "random"}
    assert rerender_changes(PLAN, replace(form, seed_mode="typed", seed="7")) == {"seed": "7"}


def test_a_random_policy_scene_keeps_the_seed_its_shown_render_drew():
    plan = replace(PLAN, seed=None)
    assert rerender_changes(plan, form_for(plan, 991), shown_seed=991) == {"seed": "991"}


def test_changed_fields_become_changes_and_bad_ones_are_refused():
    form = replace(form_for(PLAN, None), prompt="lighthouse, dawn", width="1024", height="1024", loras="")
    assert rerender_changes(PLAN, form) == {"prompt": "lighthouse, dawn", "size": "1024x1024", "loras": ""}
    for bad in (
        replace(form, width="big"),
        replace(form, prompt=" "),
        replace(form, seed_mode="typed", seed=""),
    ):
        with pytest.raises(InvalidEdit):
            rerender_changes(PLAN, bad)


def test_the_size_comes_from_the_sessions_render_values_when_the_scene_has_none():
    plan = replace(PLAN, width=None, height=None, values={"width": 512, "height": 384})
    form = form_for(plan, None)
    assert (form.width, form.height) == ("512", "384") and rerender_changes(plan, form) == {}
