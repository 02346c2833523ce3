"""The story service: what the GUI's story panel and ``luna story`` both call.

Owns no I/O of its own; it wires the store (:class:`~app.narrates.store.SessionStore`), the
turn pipeline (:class:`~app.narrates.pipeline.TurnPipeline`, needs an LLM client) and the scene
renderer (:class:`~app.narrates.rendering.SceneRenderer`, needs a render service) and adds the
session-level operations: new session from a cast, turn, regenerate (a new variant of the last
turn, the old one kept), undo, edit prose, re-render a scene, export, and the views ``show`` and
``list`` print. Built by the composition root (or the CLI) per use. Runs on one asyncio loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.narrates.cast import Cast
from app.narrates.errors import InvalidEdit, NarratesError
from app.narrates.events import EventListener
from app.narrates.export import export_session
from app.narrates.model import Character, SessionSettings, WorldNote
from app.narrates.pipeline import TurnOutcome, TurnPipeline
from app.narrates.rendering import SceneRenderer
from app.narrates.store import RenderRecord, SceneRecord, SessionRecord, SessionStore, StageRecord, TurnRecord


class ServiceNotReady(NarratesError):
    """An operation needs an LLM client or a renderer the service was built without."""


@dataclass(frozen=True)
class TurnView:
    """A turn of the story as ``show`` prints it: its stages, scenes with renders, variant count."""

    turn: TurnRecord
    stages: Mapping[str, StageRecord]
    scenes: tuple[tuple[SceneRecord, tuple[RenderRecord, ...]], ...]
    variants: int


@dataclass(frozen=True)
class SessionView:
    """A whole session as the story panel and ``luna story show`` present it."""

    session: SessionRecord
    characters: tuple[Character, ...]
    world: tuple[WorldNote, ...]
    turns: tuple[TurnView, ...]  # the story (timeline)
    other_turns: tuple[TurnRecord, ...]  # failed, interrupted, undone, unchosen variants


class StoryService:
    """Session-level operations over one store (see the module docstring)."""

    def __init__(
        self,
        store: SessionStore,
        *,
        pipeline: TurnPipeline | None = None,
        renderer: SceneRenderer | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.renderer = renderer or (pipeline.renderer if pipeline else None)

    def _need_pipeline(self) -> TurnPipeline:
        if self.pipeline is None:
            raise ServiceNotReady("this operation needs an LLM backend")
        return self.pipeline

    def new_session(
        self,
        *,
        title: str | None = None,
        cast: Cast | None = None,
        style: str | None = None,
        template: str | None = None,
    ) -> SessionRecord:
        settings = SessionSettings()
        if cast is not None:
            settings = cast.apply(settings)
        settings = settings.with_changes(style=style, template=template)
        name = title or (cast.title if cast else None) or "Untitled story"
        return self.store.create_session(
            name, settings, cast.characters if cast else (), cast.world if cast else ()
        )

    async def turn(
        self,
        session_id: int,
        text: str,
        *,
        style: str | None = None,
        instance: str | None = None,
        render: bool = True,
        on_event: EventListener | None = None,
    ) -> TurnOutcome:
        if not text.strip():
            raise InvalidEdit("the turn text is empty")
        self.store.session(session_id)
        return await self._need_pipeline().run_turn(
            session_id, text.strip(), style=style, instance=instance, render=render, on_event=on_event
        )

    async def regenerate(
        self,
        session_id: int,
        *,
        style: str | None = None,
        instance: str | None = None,
        render: bool = True,
        on_event: EventListener | None = None,
    ) -> TurnOutcome:
        """A new variant of the last turn (the last one shown, or a later one that failed)."""
        self.store.session(session_id)
        rows = [t for t in self.store.turns(session_id) if not t.undone]
        if not rows:
            raise InvalidEdit(f"session {session_id} has no turn to regenerate")
        position = max(t.position for t in rows)
        at = [t for t in rows if t.position == position]
        source = next((t for t in at if t.active), at[-1])
        return await self._need_pipeline().run_turn(
            session_id,
            source.player_input,
            position=position,
            style=style,
            instance=instance,
            render=render,
            on_event=on_event,
        )

    async def rerender(
        self,
        scene_id: int,
        *,
        changes: Mapping[str, str] | None = None,
        style: str | None = None,
        instance: str | None = None,
        on_event: EventListener | None = None,
    ) -> RenderRecord:
        if self.renderer is None:
            raise ServiceNotReady("this operation needs a ComfyUI render service")
        scene = self.store.scene(scene_id)
        return await self.renderer.render(
            scene, changes=changes, style=style, instance=instance, on_event=on_event
        )

    def undo(self, session_id: int) -> TurnRecord:
        return self.store.undo_last(session_id)

    def edit(self, turn_id: int, prose: str) -> TurnRecord:
        return self.store.edit_prose(turn_id, prose)

    def set_summary(self, session_id: int, text: str) -> SessionRecord:
        """The operator's correction of the rolling summary (kept until the story is edited below it)."""
        session = self.store.session(session_id)
        self.store.set_summary(session_id, text.strip(), session.summary_through, edited=True)
        return self.store.session(session_id)

    def rename(self, session_id: int, title: str) -> SessionRecord:
        return self.store.rename_session(session_id, title)

    def delete(self, session_id: int) -> None:
        self.store.delete_session(session_id)

    def set_cast(
        self,
        session_id: int,
        characters: tuple[Character, ...],
        world: tuple[WorldNote, ...],
        settings: SessionSettings | None = None,
    ) -> SessionRecord:
        """The cast editor's save: characters, world notes and (optionally) the session settings."""
        self.store.replace_cast(session_id, characters, world)
        if settings is not None:
            self.store.update_settings(session_id, settings)
        return self.store.session(session_id)

    def choose_variant(self, turn_id: int) -> TurnRecord:
        """Show another finished variant (swipe) of a turn's position."""
        return self.store.choose_variant(turn_id)

    def choose_render(self, render_id: int) -> RenderRecord:
        """Mark the render its scene uses (shown inline and exported)."""
        return self.store.choose_render(render_id)

    def export(self, session_id: int, fmt: str, out: Path) -> Path:
        return export_session(self.store, session_id, fmt, out)

    def view(self, session_id: int) -> SessionView:
        session = self.store.session(session_id)
        turns = []
        shown = set()
        for turn in self.store.timeline(session_id):
            shown.add(turn.id)
            scenes = tuple(
                (scene, tuple(self.store.renders(scene.id))) for scene in self.store.scenes_for_turn(turn.id)
            )
            turns.append(
                TurnView(
                    turn,
                    self.store.stages(turn.id),
                    scenes,
                    len(self.store.variants(session_id, turn.position)),
                )
            )
        others = tuple(t for t in self.store.turns(session_id) if t.id not in shown)
        return SessionView(
            session,
            self.store.characters(session_id),
            self.store.world_notes(session_id),
            tuple(turns),
            others,
        )
