"""The store's editing operations the story panel uses: rename, delete, cast replacement, settings."""

from __future__ import annotations

import pytest

from app.comfy.inject import LoraSpec
from app.narrates.errors import InvalidEdit, NotFound
from app.narrates.model import Character, SessionSettings, WorldNote
from app.narrates.store import SessionStore


@pytest.fixture
def store(tmp_path):
    with SessionStore.open(tmp_path / "db") as opened:
        yield opened


def test_rename_keeps_everything_else_and_refuses_an_empty_title(store):
    sid = store.create_session("Old", SessionSettings(premise="storm"), [Character("Mira")]).id
    assert store.rename_session(sid, "  New  ").title == "New"
    assert store.session(sid).settings.premise == "storm"
    with pytest.raises(InvalidEdit):
        store.rename_session(sid, "   ")
    assert store.session(sid).title == "New"


def test_delete_removes_the_session_and_its_turns(store):
    sid = store.create_session("Gone", SessionSettings(), [Character("Mira")]).id
    keep = store.create_session("Kept", SessionSettings()).id
    store.start_turn(sid, "climb")
    store.delete_session(sid)
    with pytest.raises(NotFound):
        store.session(sid)
    assert [s.id for s in store.sessions()] == [keep]
    assert store.integrity_check() == "ok"


def test_replace_cast_swaps_characters_and_notes_in_one_step(store):
    sid = store.create_session("S", SessionSettings(), [Character("Mira")], [WorldNote("Lamp", "dark")]).id
    store.replace_cast(
        sid,
        [Character("Tobias", "keeper", "grey beard", ("the keeper",), (LoraSpec("t.safetensors", 0.7),), 7)],
        [WorldNote("Ferry", "leaves at dawn", ("ferry",), 3)],
    )
    (tobias,) = store.characters(sid)
    assert (tobias.name, tobias.visual, tobias.aliases, tobias.seed) == (
        "Tobias",
        "grey beard",
        ("the keeper",),
        7,
    )
    assert tobias.loras == (LoraSpec("t.safetensors", 0.7),)
    assert [n.title for n in store.world_notes(sid)] == ["Ferry"]


def test_a_cast_with_duplicate_or_empty_names_changes_nothing(store):
    sid = store.create_session("S", SessionSettings(), [Character("Mira")]).id
    for cast in ([Character("Ann"), Character("ann")], [Character("  ")]):
        with pytest.raises(InvalidEdit):
            store.replace_cast(sid, cast, [])
    with pytest.raises(InvalidEdit):
        store.replace_cast(sid, [Character("Ann")], [WorldNote(" ", "x")])
    assert [c.name for c in store.characters(sid)] == ["Mira"]


def test_update_settings_is_stored(store):
    sid = store.create_session("S", SessionSettings()).id
    store.update_settings(sid, SessionSettings(seed_policy="random", template="x", width=512, height=768))
    settings = store.session(sid).settings
    assert (settings.seed_policy, settings.template, settings.width) == ("random", "x", 512)
