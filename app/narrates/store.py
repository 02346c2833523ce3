"""The session store: SQLite (stdlib ``sqlite3``, WAL, foreign keys, versioned schema).

One file, ``<user data>/narrates/sessions.sqlite3``, holds sessions, characters, world notes,
turns (player input, each stage's output, timings and model), scenes (prompt, negative, style,
template name and content hash, every parameter, seed) and renders (instance, prompt id,
status, timings, the image files — stored beside it by content hash, see :class:`ImageStore` —
and which one the operator chose).

Durability rules (what ``luna story`` and the GUI rely on):

* every write is one short transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); each pipeline stage
  commits its own output, so a process killed mid-turn leaves every finished stage in place;
* opening the store marks turns and renders still ``running`` whose process is gone (each row
  names its owner by pid and process start time) as ``interrupted``; a live one — the GUI's turn
  while ``luna story show`` runs — is left alone;
* turns are never deleted: undo sets ``undone``, regenerate adds a *variant* (a swipe) at the
  same position, and the story is the ``active`` variant of every position that is not undone.
  A variant becomes active only when it finishes, so a failed regenerate keeps the old turn;
* a database written by a newer schema raises :class:`~app.narrates.errors.SchemaTooNew`
  before anything is written to it; older ones are migrated in order (``_MIGRATIONS``).

A :class:`SessionStore` owns one connection and is used from one thread (the asyncio loop's:
every statement is an indexed lookup or a small insert, well under a millisecond).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.narrates.errors import InvalidEdit, NotFound, SchemaTooNew, StoreError
from app.narrates.model import (
    STAGES,
    Character,
    ScenePlan,
    SessionSettings,
    WorldNote,
    lora_from_dict,
    lora_to_dict,
)
from app.paths import user_dirs

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    settings TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    summary_through INTEGER NOT NULL DEFAULT 0,
    summary_edited INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE characters (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE NOCASE,
    description TEXT NOT NULL,
    visual TEXT NOT NULL,
    aliases TEXT NOT NULL,
    loras TEXT NOT NULL,
    seed INTEGER,
    UNIQUE (session_id, name)
);
CREATE TABLE world_notes (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    keys TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    variant INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    undone INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    player_input TEXT NOT NULL,
    prose TEXT,
    prose_edited INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_stage TEXT,
    backend TEXT,
    owner TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (session_id, position, variant)
);
CREATE INDEX turns_by_session ON turns (session_id, position);
CREATE TABLE stages (
    turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    output TEXT NOT NULL,
    model TEXT,
    started_at REAL NOT NULL,
    elapsed_s REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    PRIMARY KEY (turn_id, stage)
);
CREATE TABLE scenes (
    id INTEGER PRIMARY KEY,
    turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
    prompt TEXT NOT NULL,
    negative TEXT NOT NULL,
    style TEXT,
    template TEXT NOT NULL,
    template_hash TEXT,
    plan TEXT NOT NULL,
    seed INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE renders (
    id INTEGER PRIMARY KEY,
    scene_id INTEGER NOT NULL REFERENCES scenes(id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    changes TEXT NOT NULL,
    style TEXT,
    template TEXT NOT NULL,
    template_hash TEXT,
    instance TEXT,
    prompt_id TEXT,
    params TEXT,
    seed INTEGER,
    timings TEXT,
    warnings TEXT,
    error TEXT,
    error_kind TEXT,
    chosen INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE render_files (
    id INTEGER PRIMARY KEY,
    render_id INTEGER NOT NULL REFERENCES renders(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    filename TEXT NOT NULL,
    mime_type TEXT,
    bytes INTEGER NOT NULL
);
"""

# version -> the script that takes a database from version-1 to version
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}


def process_token(pid: int | None = None) -> str:
    """``pid:start time`` of a process: who owns a running turn (a reused pid has another start time)."""
    process = psutil.Process(pid)
    return f"{process.pid}:{process.create_time():.3f}"


def _owner_alive(token: str | None) -> bool:
    if not token:
        return False
    pid_text, _, started = token.partition(":")
    try:
        return process_token(int(pid_text)) == token
    except (ValueError, psutil.Error):
        return False


def default_store_dir() -> Path:
    return user_dirs().data / "narrates"


# ---------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class SessionRecord:
    """One ``sessions`` row: the story's settings and its rolling summary."""

    id: int
    title: str
    settings: SessionSettings
    summary: str
    summary_through: int
    summary_edited: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SessionListing:
    """A session in the list view: its title, how many turns it has, when it last changed."""

    id: int
    title: str
    turns: int
    updated_at: float


@dataclass(frozen=True)
class TurnRecord:
    """One ``turns`` row: a variant at a story position, its status and its prose."""

    id: int
    session_id: int
    position: int
    variant: int
    active: bool
    undone: bool
    status: str
    player_input: str
    prose: str | None
    prose_edited: bool
    error: str | None
    error_stage: str | None
    backend: Mapping[str, Any] | None
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class StageRecord:
    """One stage's committed output (JSON-able) with its timing and the model that produced it."""

    stage: str
    output: Any
    model: str | None
    started_at: float
    elapsed_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class SceneRecord:
    """One ``scenes`` row: the Dreamer's plan for a turn (never changed; re-renders add renders)."""

    id: int
    turn_id: int
    session_id: int
    plan: ScenePlan
    template_hash: str | None
    created_at: float


@dataclass(frozen=True)
class RenderFileRecord:
    """One image of a render, stored by content hash under the image store."""

    sha256: str
    path: Path  # absolute
    filename: str
    mime_type: str | None
    bytes: int


@dataclass(frozen=True)
class RenderRecord:
    """One ``renders`` row: a render of a scene with its values, outcome and files."""

    id: int
    scene_id: int
    status: str
    changes: Mapping[str, Any]
    style: str | None
    template: str
    template_hash: str | None
    instance: str | None
    prompt_id: str | None
    params: Mapping[str, Any] | None
    seed: int | None
    timings: Mapping[str, float] | None
    warnings: tuple[str, ...]
    error: str | None
    error_kind: str | None
    chosen: bool
    created_at: float
    finished_at: float | None
    files: tuple[RenderFileRecord, ...] = ()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "strength_model"):  # LoraSpec
        return lora_to_dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store {value!r} as JSON")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# ---------------------------------------------------------------------------------------------
# images by content hash


class ImageStore:
    """Image files under ``<store dir>/images/<sha[:2]>/<sha256><ext>``, written atomically.

    A file is written to a temporary name, flushed and fsynced, then renamed into place, so a
    full disk or a crash never leaves a truncated image under a content-hash name; identical
    images are stored once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str, suffix: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{suffix.lower()}"

    def put(self, data: bytes, suffix: str = ".png") -> tuple[str, Path]:
        """Store ``data``; returns its sha256 and path. Raises ``OSError`` (nothing left behind)."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest, suffix)
        if target.is_file() and target.stat().st_size == len(data):
            return digest, target
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            self._write(temp, data)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return digest, target

    def _write(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())


# ---------------------------------------------------------------------------------------------
# the store


class SessionStore:
    """The SQLite session store; see the module docstring. ``with SessionStore.open() as store:``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, images: ImageStore) -> None:
        self._db = connection
        self.path = path
        self.images = images
        self.owner = process_token()

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | None = None) -> SessionStore:
        """Open (creating or migrating) the store in ``directory`` (default: the user data dir)."""
        root = directory or default_store_dir()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the session directory {root}: {exc}") from exc
        path = root / "sessions.sqlite3"
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            db.row_factory = sqlite3.Row
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(str(path), version, SCHEMA_VERSION)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a process crash
            db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, path, ImageStore(root / "images"))
            store._migrate(version)
            store._mark_interrupted()
        except SchemaTooNew:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{path} is not a usable session database: {exc}") from exc
        return store

    def _migrate(self, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript() would COMMIT on its own; statement by statement keeps one transaction
            with self._tx():
                for statement in _split_sql(_MIGRATIONS[target]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    def _mark_interrupted(self) -> None:
        """Turns and renders left ``running`` by a process that is gone become ``interrupted``
        (another live process — the GUI while ``luna story`` runs — keeps its own)."""
        now = time.time()
        with self._tx():
            for row in self._db.execute("SELECT id, owner FROM turns WHERE status = 'running'").fetchall():
                if _owner_alive(row["owner"]):
                    continue
                done = {
                    r[0] for r in self._db.execute("SELECT stage FROM stages WHERE turn_id = ?", (row[0],))
                }
                pending = next((s for s in STAGES if s not in done), "dreamer")
                self._db.execute(
                    "UPDATE turns SET status = 'interrupted', error_stage = ?, finished_at = ?, error = ? "
                    "WHERE id = ?",
                    (pending, now, f"interrupted during the {pending} stage (the process ended)", row[0]),
                )
            for row in self._db.execute("SELECT id, owner FROM renders WHERE status = 'running'").fetchall():
                if not _owner_alive(row["owner"]):
                    self._db.execute(
                        "UPDATE renders SET status = 'interrupted', error_kind = 'interrupted', finished_at = ?, "
                        "error = 'interrupted (the process ended before the render finished)' WHERE id = ?",
                        (now, row[0]),
                    )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. SQLite's own failures (locked past the busy timeout, disk full,
        I/O errors) become :class:`StoreError` naming the database; what was committed before
        stays, and nothing of this transaction is left half-written."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the session database {self.path} cannot be written now: {exc}") from exc
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"writing the session database {self.path} failed: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"committing to the session database {self.path} failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (e.g. on a full disk).
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def integrity_check(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # --- sessions -----------------------------------------------------------------------------

    def create_session(
        self,
        title: str,
        settings: SessionSettings,
        characters: Sequence[Character] = (),
        world: Sequence[WorldNote] = (),
    ) -> SessionRecord:
        now = time.time()
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO sessions (title, settings, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (title, _dumps(settings.as_dict()), now, now),
            )
            session_id = cursor.lastrowid
            self._insert_cast(db, session_id, characters, world)
        return self.session(session_id)

    def session(self, session_id: int) -> SessionRecord:
        row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise NotFound("session", session_id, "'luna story list' shows the sessions")
        return SessionRecord(
            id=row["id"],
            title=row["title"],
            settings=SessionSettings.from_dict(json.loads(row["settings"])),
            summary=row["summary"],
            summary_through=row["summary_through"],
            summary_edited=bool(row["summary_edited"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def sessions(self) -> list[SessionListing]:
        rows = self._db.execute(
            "SELECT s.id, s.title, s.updated_at, "
            "(SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id AND t.active AND NOT t.undone) AS n "
            "FROM sessions s ORDER BY s.updated_at DESC, s.id DESC"
        ).fetchall()
        return [SessionListing(r["id"], r["title"], r["n"], r["updated_at"]) for r in rows]

    def rename_session(self, session_id: int, title: str) -> SessionRecord:
        if not title.strip():
            raise InvalidEdit("the session title is empty")
        self.session(session_id)
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?",
                (title.strip(), time.time(), session_id),
            )
        return self.session(session_id)

    def delete_session(self, session_id: int) -> None:
        """Delete the session and (by cascade) its cast, turns, scenes and render rows; the image
        files stay in the content-addressed store (another render may share them)."""
        self.session(session_id)
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def update_settings(self, session_id: int, settings: SessionSettings) -> SessionRecord:
        self.session(session_id)
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET settings = ?, updated_at = ? WHERE id = ?",
                (_dumps(settings.as_dict()), time.time(), session_id),
            )
        return self.session(session_id)

    def replace_cast(
        self, session_id: int, characters: Sequence[Character], world: Sequence[WorldNote]
    ) -> None:
        """Replace the session's characters and world notes in one transaction (the cast editor's
        save); names must be unique (case-insensitive), else nothing changes."""
        self.session(session_id)
        seen: set[str] = set()
        for character in characters:
            key = character.name.strip().casefold()
            if not key:
                raise InvalidEdit("a character has no name")
            if key in seen:
                raise InvalidEdit(f"two characters are named {character.name!r}")
            seen.add(key)
        for note in world:
            if not note.title.strip():
                raise InvalidEdit("a world note has no title")
        with self._tx() as db:
            db.execute("DELETE FROM characters WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM world_notes WHERE session_id = ?", (session_id,))
            self._insert_cast(db, session_id, characters, world)
            self._touch(db, session_id)

    def _insert_cast(
        self,
        db: sqlite3.Connection,
        session_id: int,
        characters: Sequence[Character],
        world: Sequence[WorldNote],
    ) -> None:
        for character in characters:
            db.execute(
                "INSERT INTO characters (session_id, name, description, visual, aliases, loras, seed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    character.name.strip(),
                    character.description,
                    character.visual,
                    _dumps(list(character.aliases)),
                    _dumps([lora_to_dict(x) for x in character.loras]),
                    character.seed,
                ),
            )
        for note in world:
            db.execute(
                "INSERT INTO world_notes (session_id, title, content, keys, priority) VALUES (?, ?, ?, ?, ?)",
                (session_id, note.title, note.content, _dumps(list(note.keys)), note.priority),
            )

    def characters(self, session_id: int) -> tuple[Character, ...]:
        rows = self._db.execute(
            "SELECT * FROM characters WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        return tuple(
            Character(
                name=r["name"],
                description=r["description"],
                visual=r["visual"],
                aliases=tuple(json.loads(r["aliases"])),
                loras=tuple(lora_from_dict(x) for x in json.loads(r["loras"])),
                seed=r["seed"],
                id=r["id"],
            )
            for r in rows
        )

    def world_notes(self, session_id: int) -> tuple[WorldNote, ...]:
        rows = self._db.execute(
            "SELECT * FROM world_notes WHERE session_id = ? ORDER BY priority DESC, id", (session_id,)
        ).fetchall()
        return tuple(
            WorldNote(r["title"], r["content"], tuple(json.loads(r["keys"])), r["priority"], r["id"])
            for r in rows
        )

    def set_summary(self, session_id: int, summary: str, through: int, *, edited: bool = False) -> None:
        """Store the rolling summary, covering the story up to position ``through``."""
        self.session(session_id)
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET summary = ?, summary_through = ?, summary_edited = ?, updated_at = ? "
                "WHERE id = ?",
                (summary, through, int(edited), time.time(), session_id),
            )

    def _touch(self, db: sqlite3.Connection, session_id: int) -> None:
        db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (time.time(), session_id))

    # --- turns --------------------------------------------------------------------------------

    def _turn_from(self, r: sqlite3.Row) -> TurnRecord:
        return TurnRecord(
            id=r["id"],
            session_id=r["session_id"],
            position=r["position"],
            variant=r["variant"],
            active=bool(r["active"]),
            undone=bool(r["undone"]),
            status=r["status"],
            player_input=r["player_input"],
            prose=r["prose"],
            prose_edited=bool(r["prose_edited"]),
            error=r["error"],
            error_stage=r["error_stage"],
            backend=_loads(r["backend"]),
            created_at=r["created_at"],
            finished_at=r["finished_at"],
        )

    def turn(self, turn_id: int) -> TurnRecord:
        row = self._db.execute("SELECT * FROM turns WHERE id = ?", (turn_id,)).fetchone()
        if row is None:
            raise NotFound("turn", turn_id, "'luna story show SESSION' lists turn ids")
        return self._turn_from(row)

    def timeline(self, session_id: int) -> list[TurnRecord]:
        """The story as it stands: the chosen variant of every position not undone."""
        rows = self._db.execute(
            "SELECT * FROM turns WHERE session_id = ? AND active AND NOT undone ORDER BY position",
            (session_id,),
        ).fetchall()
        return [self._turn_from(r) for r in rows]

    def turns(self, session_id: int) -> list[TurnRecord]:
        """Every turn row of the session (variants, undone and failed ones too), in order."""
        rows = self._db.execute(
            "SELECT * FROM turns WHERE session_id = ? ORDER BY position, variant", (session_id,)
        ).fetchall()
        return [self._turn_from(r) for r in rows]

    def variants(self, session_id: int, position: int) -> list[TurnRecord]:
        rows = self._db.execute(
            "SELECT * FROM turns WHERE session_id = ? AND position = ? AND NOT undone ORDER BY variant",
            (session_id, position),
        ).fetchall()
        return [self._turn_from(r) for r in rows]

    def next_position(self, session_id: int) -> int:
        row = self._db.execute(
            "SELECT MAX(position) FROM turns WHERE session_id = ? AND active AND NOT undone", (session_id,)
        ).fetchone()
        return (row[0] or 0) + 1

    def start_turn(
        self,
        session_id: int,
        player_input: str,
        *,
        position: int | None = None,
        backend: Mapping[str, Any] | None = None,
    ) -> TurnRecord:
        """A new ``running`` turn: at the next position, or a new variant of ``position``."""
        self.session(session_id)
        with self._tx() as db:
            if position is None:
                position = self.next_position(session_id)
            row = db.execute(
                "SELECT MAX(variant) FROM turns WHERE session_id = ? AND position = ?", (session_id, position)
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO turns (session_id, position, variant, status, player_input, backend, owner, "
                "created_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    session_id,
                    position,
                    (row[0] or 0) + 1,
                    player_input,
                    None if backend is None else _dumps(backend),
                    self.owner,
                    time.time(),
                ),
            )
            self._touch(db, session_id)
        return self.turn(cursor.lastrowid)

    def save_stage(self, turn_id: int, record: StageRecord, *, prose: str | None = None) -> None:
        """Commit one stage's output (and, for the writer, the prose) in one transaction."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO stages (turn_id, stage, output, model, started_at, elapsed_s, "
                "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn_id,
                    record.stage,
                    _dumps(record.output),
                    record.model,
                    record.started_at,
                    record.elapsed_s,
                    record.prompt_tokens,
                    record.completion_tokens,
                ),
            )
            if prose is not None:
                db.execute("UPDATE turns SET prose = ? WHERE id = ?", (prose, turn_id))

    def stages(self, turn_id: int) -> dict[str, StageRecord]:
        rows = self._db.execute("SELECT * FROM stages WHERE turn_id = ?", (turn_id,)).fetchall()
        found = {
            r["stage"]: StageRecord(
                stage=r["stage"],
                output=json.loads(r["output"]),
                model=r["model"],
                started_at=r["started_at"],
                elapsed_s=r["elapsed_s"],
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
            )
            for r in rows
        }
        order = {name: index for index, name in enumerate(STAGES)}
        return dict(sorted(found.items(), key=lambda item: order.get(item[0], len(order))))

    def finish_turn(self, turn_id: int) -> TurnRecord:
        """Mark the turn done and make it the chosen variant of its position."""
        turn = self.turn(turn_id)
        with self._tx() as db:
            db.execute(
                "UPDATE turns SET active = 0 WHERE session_id = ? AND position = ? AND id != ?",
                (turn.session_id, turn.position, turn_id),
            )
            db.execute(
                "UPDATE turns SET status = 'done', active = 1, undone = 0, finished_at = ? WHERE id = ?",
                (time.time(), turn_id),
            )
            self._touch(db, turn.session_id)
        return self.turn(turn_id)

    def fail_turn(self, turn_id: int, stage: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE turns SET status = 'failed', error_stage = ?, error = ?, finished_at = ? WHERE id = ?",
                (stage, error, time.time(), turn_id),
            )

    def undo_last(self, session_id: int) -> TurnRecord:
        """Undo the last turn of the story (all its variants); returns the turn that was shown."""
        self.session(session_id)
        timeline = self.timeline(session_id)
        if not timeline:
            raise InvalidEdit(f"session {session_id} has no turn to undo")
        last = timeline[-1]
        with self._tx() as db:
            db.execute(
                "UPDATE turns SET undone = 1 WHERE session_id = ? AND position >= ?",
                (session_id, last.position),
            )
            self._touch(db, session_id)
            summary = self.session(session_id)
            if summary.summary_through >= last.position:
                db.execute(
                    "UPDATE sessions SET summary = '', summary_through = 0, summary_edited = 0 WHERE id = ?",
                    (session_id,),
                )
        return last

    def choose_variant(self, turn_id: int) -> TurnRecord:
        """Show another finished variant (swipe) at its position."""
        turn = self.turn(turn_id)
        if turn.status != "done":
            raise InvalidEdit(f"turn {turn_id} is {turn.status}; only a finished variant can be chosen")
        return self.finish_turn(turn_id)

    def edit_prose(self, turn_id: int, prose: str) -> TurnRecord:
        turn = self.turn(turn_id)
        if turn.prose is None:
            raise InvalidEdit(f"turn {turn_id} has no prose to edit ({turn.status})")
        if not prose.strip():
            raise InvalidEdit("the new prose is empty")
        with self._tx() as db:
            db.execute("UPDATE turns SET prose = ?, prose_edited = 1 WHERE id = ?", (prose, turn_id))
            session = self.session(turn.session_id)
            # a summary that already covers this turn was made from the old text: rebuild it
            if session.summary_through >= turn.position and not session.summary_edited:
                db.execute(
                    "UPDATE sessions SET summary = '', summary_through = 0 WHERE id = ?", (turn.session_id,)
                )
            self._touch(db, turn.session_id)
        return self.turn(turn_id)

    # --- scenes and renders -------------------------------------------------------------------

    def add_scene(self, turn_id: int, plan: ScenePlan, template_hash: str | None) -> SceneRecord:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO scenes (turn_id, prompt, negative, style, template, template_hash, plan, seed, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn_id,
                    plan.positive,
                    plan.negative,
                    plan.style,
                    plan.template,
                    template_hash,
                    _dumps(plan.as_dict()),
                    plan.seed,
                    time.time(),
                ),
            )
        return self.scene(cursor.lastrowid)

    def scene(self, scene_id: int) -> SceneRecord:
        row = self._db.execute(
            "SELECT s.*, t.session_id FROM scenes s JOIN turns t ON t.id = s.turn_id WHERE s.id = ?",
            (scene_id,),
        ).fetchone()
        if row is None:
            raise NotFound("scene", scene_id, "'luna story show SESSION' lists scene ids")
        return SceneRecord(
            id=row["id"],
            turn_id=row["turn_id"],
            session_id=row["session_id"],
            plan=ScenePlan.from_dict(json.loads(row["plan"])),
            template_hash=row["template_hash"],
            created_at=row["created_at"],
        )

    def scenes_for_turn(self, turn_id: int) -> list[SceneRecord]:
        ids = [
            r[0] for r in self._db.execute("SELECT id FROM scenes WHERE turn_id = ? ORDER BY id", (turn_id,))
        ]
        return [self.scene(i) for i in ids]

    def start_render(
        self,
        scene_id: int,
        *,
        style: str | None,
        template: str,
        template_hash: str | None,
        changes: Mapping[str, Any],
    ) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO renders (scene_id, status, changes, style, template, template_hash, owner, "
                "created_at) VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
                (scene_id, _dumps(dict(changes)), style, template, template_hash, self.owner, time.time()),
            )
        return cursor.lastrowid

    def finish_render(
        self,
        render_id: int,
        *,
        instance: str,
        prompt_id: str,
        params: Mapping[str, Any],
        seed: int | None,
        timings: Mapping[str, float],
        warnings: Sequence[str],
        files: Sequence[RenderFileRecord],
        template: str | None = None,
    ) -> RenderRecord:
        """Record a finished render; the first finished render of a scene becomes the chosen one."""
        with self._tx() as db:
            scene_id = db.execute("SELECT scene_id FROM renders WHERE id = ?", (render_id,)).fetchone()[0]
            chosen = db.execute(
                "SELECT COUNT(*) FROM renders WHERE scene_id = ? AND chosen", (scene_id,)
            ).fetchone()[0]
            db.execute(
                "UPDATE renders SET status = 'done', instance = ?, prompt_id = ?, params = ?, seed = ?, "
                "timings = ?, warnings = ?, chosen = ?, finished_at = ?, template = COALESCE(?, template) "
                "WHERE id = ?",
                (
                    instance,
                    prompt_id,
                    _dumps(dict(params)),
                    seed,
                    _dumps(dict(timings)),
                    _dumps(list(warnings)),
                    int(chosen == 0),
                    time.time(),
                    template,
                    render_id,
                ),
            )
            for file in files:
                db.execute(
                    "INSERT INTO render_files (render_id, sha256, path, filename, mime_type, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        render_id,
                        file.sha256,
                        str(file.path.relative_to(self.images.root)),
                        file.filename,
                        file.mime_type,
                        file.bytes,
                    ),
                )
        return self.render(render_id)

    def fail_render(
        self,
        render_id: int,
        *,
        kind: str,
        error: str,
        instance: str | None = None,
        prompt_id: str | None = None,
        template: str | None = None,
    ) -> RenderRecord:
        with self._tx() as db:
            db.execute(
                "UPDATE renders SET status = 'failed', error_kind = ?, error = ?, instance = ?, prompt_id = ?, "
                "finished_at = ?, template = COALESCE(?, template) WHERE id = ?",
                (kind, error, instance, prompt_id, time.time(), template, render_id),
            )
        return self.render(render_id)

    def choose_render(self, render_id: int) -> RenderRecord:
        render = self.render(render_id)
        if render.status != "done":
            raise InvalidEdit(f"render {render_id} is {render.status}; only a finished render can be chosen")
        with self._tx() as db:
            db.execute(
                "UPDATE renders SET chosen = (id = ?) WHERE scene_id = ?", (render_id, render.scene_id)
            )
        return self.render(render_id)

    def render(self, render_id: int) -> RenderRecord:
        row = self._db.execute("SELECT * FROM renders WHERE id = ?", (render_id,)).fetchone()
        if row is None:
            raise NotFound("render", render_id)
        files = tuple(
            RenderFileRecord(
                sha256=f["sha256"],
                path=self.images.root / f["path"],
                filename=f["filename"],
                mime_type=f["mime_type"],
                bytes=f["bytes"],
            )
            for f in self._db.execute(
                "SELECT * FROM render_files WHERE render_id = ? ORDER BY id", (render_id,)
            )
        )
        return RenderRecord(
            id=row["id"],
            scene_id=row["scene_id"],
            status=row["status"],
            changes=json.loads(row["changes"]),
            style=row["style"],
            template=row["template"],
            template_hash=row["template_hash"],
            instance=row["instance"],
            prompt_id=row["prompt_id"],
            params=_loads(row["params"]),
            seed=row["seed"],
            timings=_loads(row["timings"]),
            warnings=tuple(_loads(row["warnings"]) or ()),
            error=row["error"],
            error_kind=row["error_kind"],
            chosen=bool(row["chosen"]),
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            files=files,
        )

    def renders(self, scene_id: int) -> list[RenderRecord]:
        ids = [
            r[0]
            for r in self._db.execute("SELECT id FROM renders WHERE scene_id = ? ORDER BY id", (scene_id,))
        ]
        return [self.render(i) for i in ids]


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (ours contain no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
