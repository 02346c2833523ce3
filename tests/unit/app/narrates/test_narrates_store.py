"""The SQLite session store: schema versions, per-stage commits, interrupted turns, swipes, undo, edit."""

from __future__ import annotations

import sqlite3

import pytest

from app.comfy.inject import LoraSpec
from app.narrates.errors import InvalidEdit, NotFound, SchemaTooNew, StoreError
from app.narrates.model import Character, ScenePlan, SessionSettings, WorldNote
from app.narrates.store import SCHEMA_VERSION, RenderFileRecord, SessionStore, StageRecord


@pytest.fixture
def store(tmp_path):
    with SessionStore.open(tmp_path / "db") as opened:
        yield opened


def new_session(store: SessionStore) -> int:
    return store.create_session(
        "Lighthouse",
        SessionSettings(premise="a storm"),
        [
            Character(
                "Mira",
                "brave",
                "silver hair",
                ("the cartographer",),
                (LoraSpec("mira.safetensors", 0.8),),
                42,
            )
        ],
        [WorldNote("Lamp", "dark for ten years", ("lamp",), 5)],
    ).id


def finished_turn(store: SessionStore, session: int, text: str, position: int | None = None) -> int:
    turn = store.start_turn(session, text, position=position)
    store.save_stage(
        turn.id, StageRecord("writer", {"prose": text.upper()}, "m", 0.0, 0.1), prose=text.upper()
    )
    store.finish_turn(turn.id)
    return turn.id


def plan() -> ScenePlan:
    return ScenePlan("a, b", "c", ("Mira",), "scene", None, "sdxl_txt2img", None, None, 7, "scene")


def test_a_session_keeps_its_cast_world_and_settings(store):
    session = new_session(store)
    [mira] = store.characters(session)
    assert mira.aliases == ("the cartographer",) and mira.loras == (LoraSpec("mira.safetensors", 0.8),)
    assert store.world_notes(session)[0].keys == ("lamp",)
    assert store.session(session).settings.premise == "a storm"


def test_the_journal_is_wal_and_foreign_keys_are_enforced(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO turns (session_id, position, variant, status, player_input, created_at) "
            "VALUES (999, 1, 1, 'running', 'x', 0)"
        )


def test_a_database_from_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    with SessionStore.open(tmp_path):
        pass
    path = tmp_path / "sessions.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="update Luna"):
        SessionStore.open(tmp_path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    (tmp_path / "sessions.sqlite3").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable session database"):
        SessionStore.open(tmp_path)


def test_an_unknown_session_turn_or_scene_is_not_found(store):
    with pytest.raises(NotFound, match="no session 7"):
        store.session(7)
    with pytest.raises(NotFound, match="no turn 3"):
        store.turn(3)
    with pytest.raises(NotFound, match="no scene 9"):
        store.scene(9)


def test_reopening_marks_a_dead_processs_running_turn_interrupted_and_keeps_its_finished_stages(tmp_path):
    with SessionStore.open(tmp_path) as store:
        session = new_session(store)
        turn = store.start_turn(session, "open the door")
        store.save_stage(turn.id, StageRecord("preprocessor", {"mode": "do"}, "m", 0.0, 0.01))
        scene = store.add_scene(finished_turn(store, session, "earlier"), plan(), None)
        render = store.start_render(scene.id, style=None, template="t", template_hash=None, changes={})
        live = store.start_turn(session, "still running here")
        # the first turn and the render belonged to a process that has ended
        store._db.execute("UPDATE turns SET owner = '999999999:1.000' WHERE id = ?", (turn.id,))
        store._db.execute("UPDATE renders SET owner = NULL WHERE id = ?", (render,))
    with SessionStore.open(tmp_path) as store:
        again = store.turn(turn.id)
        assert again.status == "interrupted" and again.error_stage == "strategist"
        assert list(store.stages(turn.id)) == ["preprocessor"]
        assert store.render(render).status == "interrupted"
        assert store.turn(live.id).status == "running"  # its owner (this process) is alive
        assert store.integrity_check() == "ok"


def test_a_regenerated_turn_is_a_new_variant_and_the_old_one_is_kept(store):
    session = new_session(store)
    first = finished_turn(store, session, "look around")
    second = finished_turn(store, session, "look around", position=1)
    [shown] = store.timeline(session)
    assert shown.id == second and shown.variant == 2
    assert [t.id for t in store.variants(session, 1)] == [first, second]
    store.choose_variant(first)
    assert store.timeline(session)[0].id == first


def test_a_failed_regenerate_keeps_the_old_variant_in_the_story(store):
    session = new_session(store)
    first = finished_turn(store, session, "look around")
    retry = store.start_turn(session, "look around", position=1)
    store.fail_turn(retry.id, "writer", "boom")
    assert [t.id for t in store.timeline(session)] == [first]
    assert store.next_position(session) == 2


def test_undo_hides_the_last_turn_but_keeps_its_rows(store):
    session = new_session(store)
    finished_turn(store, session, "one")
    two = finished_turn(store, session, "two")
    assert store.undo_last(session).id == two
    assert [t.player_input for t in store.timeline(session)] == ["one"]
    assert store.turn(two).undone and store.next_position(session) == 2
    store.undo_last(session)
    with pytest.raises(InvalidEdit, match="no turn to undo"):
        store.undo_last(session)


def test_editing_prose_marks_the_turn_and_resets_a_summary_that_covered_it(store):
    session = new_session(store)
    turn = finished_turn(store, session, "one")
    store.set_summary(session, "Mira arrived.", 1)
    edited = store.edit_prose(turn, "You arrive, soaked.")
    assert edited.prose == "You arrive, soaked." and edited.prose_edited
    assert store.stages(turn)["writer"].output == {"prose": "ONE"}  # the model's original is kept
    assert store.session(session).summary == ""
    with pytest.raises(InvalidEdit, match="empty"):
        store.edit_prose(turn, "  ")


def test_the_first_finished_render_of_a_scene_is_chosen_and_renders_keep_files(store, tmp_path):
    session = new_session(store)
    scene = store.add_scene(finished_turn(store, session, "x"), plan(), "abc")
    digest, path = store.images.put(b"\x89PNG fake")
    files = [RenderFileRecord(digest, path, "ComfyUI_0001.png", "image/png", 10)]
    ids = []
    for seed in (1, 2):
        render = store.start_render(
            scene.id, style="anime", template="t", template_hash="abc", changes={"seed": str(seed)}
        )
        store.finish_render(
            render,
            instance="i",
            prompt_id="p",
            params={"seed": seed},
            seed=seed,
            timings={"total": 1.0},
            warnings=[],
            files=files,
        )
        ids.append(render)
    first, second = store.renders(scene.id)
    assert (
        first.chosen
        and not second.chosen
        and first.files[0].path == path
        and path.read_bytes() == b"\x89PNG fake"
    )
    store.choose_render(ids[1])
    assert [r.chosen for r in store.renders(scene.id)] == [False, True]


def test_an_image_write_that_fails_leaves_no_partial_file(store, monkeypatch):
    def full_disk(path, data):
        path.write_bytes(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.images, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.images.put(b"0123456789")
    assert not [p for p in store.images.root.rglob("*") if p.is_file()]


def test_a_database_locked_by_another_process_is_a_store_error_and_keeps_what_was_committed(tmp_path):
    with SessionStore.open(tmp_path) as store:
        session = new_session(store)
        kept = finished_turn(store, session, "the stairs")
        store._db.execute("PRAGMA busy_timeout = 50")  # fail fast instead of the 10 s default
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock (e.g. `luna story` mid-turn)
        try:
            with pytest.raises(StoreError, match="cannot be written now"):
                store.start_turn(session, "the lamp room")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.start_turn(session, "the lamp room").id != kept  # the lock is gone: writes work
        assert next(t.id for t in store.timeline(session)) == kept
