"""Qt adapter of the Narrates engine for the story panel: one session open, one turn at a time.

Owns nothing but the glue: the :class:`~app.narrates.service.StoryService` over the app's
:class:`~app.narrates.store.SessionStore` (built by :mod:`app.bootstrap_story`), the LLM from
:class:`~app.services.llm_backend.LlmBackendManager`, renders through the app's style router (the
:class:`~app.gui.adapters.instances.InstancesAdapter`'s, so a replaced router is used at once) and
the daemon health gate over the app's status feed (:class:`~app.gui.adapters.status_feed.StatusFeedAdapter`,
no second connection). Runs turns, regenerates and re-renders as tasks on the qasync loop and
turns the engine's typed events (:mod:`app.narrates.events`) into signals:

``sessions_changed(list[SessionListing])``, ``view_changed(SessionView | None)``,
``turn_started(str player_input)``, ``stage_changed(str stage, str state, str detail)`` (stage:
preprocessor / strategist / writer / dreamer / render; state: waiting / running / done / failed /
skipped), ``prose_token(str)``, ``render_progress(float fraction)``, ``turn_ended(str outcome,
str detail)`` (done / failed / cancelled), ``busy_changed(bool)``, ``readiness_changed(RenderReadiness)``,
``backend_changed(BackendState)``, ``rerender_finished(int scene_id, object RenderRecord | None)``.

Failures the operator caused or can fix go to the :class:`~app.gui.adapters.messages.MessageHub`
as sentences. GUI thread only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.comfy.events import Progress
from app.comfy.render import RenderService
from app.gui.adapters.instances import InstancesAdapter
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.status_feed import StatusFeedAdapter
from app.gui.adapters.tasks import TaskSet
from app.narrates.errors import NarratesError
from app.narrates.events import (
    RenderFailed,
    RenderFinished,
    RenderProgress,
    RenderStarted,
    StageFailed,
    StageFinished,
    StageStarted,
    StageToken,
)
from app.narrates.health import DaemonHealthGate
from app.narrates.llm import LlmClient, LlmError
from app.narrates.model import STAGES, Character, SessionSettings, WorldNote
from app.narrates.pipeline import TurnPipeline
from app.narrates.readiness import RenderReadiness, render_readiness
from app.narrates.rendering import SceneRenderer, TemplateCache
from app.narrates.service import SessionView, StoryService
from app.narrates.store import SessionStore
from app.services.llm_backend import BackendChoice, LlmBackendManager
from app.supervision.child import GaveUp, Output, Restarting

log = logging.getLogger(__name__)
PANEL_STAGES = (*STAGES, "render")


class StoryAdapter(QObject):
    """See the module docstring."""

    sessions_changed = Signal(object)
    view_changed = Signal(object)
    turn_started = Signal(str)
    stage_changed = Signal(str, str, str)
    prose_token = Signal(str)
    render_progress = Signal(float)
    turn_ended = Signal(str, str)
    busy_changed = Signal(bool)
    readiness_changed = Signal(object)
    backend_changed = Signal(object)
    rerender_finished = Signal(int, object)

    def __init__(
        self,
        store: SessionStore,
        backends: LlmBackendManager,
        instances: InstancesAdapter,
        feed: StatusFeedAdapter,
        messages: MessageHub,
        *,
        health_timeout: float = 2.0,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.store = store
        self.backends = backends
        self._instances = instances
        self._feed = feed
        self._messages = messages
        self._health_timeout = health_timeout
        self._templates = TemplateCache()
        self._tasks = TaskSet(messages.error)
        self._turn: asyncio.Task | None = None
        self._pipeline: tuple[LlmClient, TurnPipeline] | None = None
        self.session_id: int | None = None
        self.view: SessionView | None = None
        self.readiness: RenderReadiness | None = None
        self.stage_states: dict[str, str] = dict.fromkeys(PANEL_STAGES, "waiting")
        # Undone in aclose: the manager and the app's adapters outlive a closed story adapter
        # (tests), and a reference cycle through them would leave this QObject to the cyclic
        # garbage collector, which may run on any thread.
        self._unsubscribe = (
            backends.add_listener(self.backend_changed.emit),
            backends.add_child_listener(self._on_llm_child),
        )
        self._connections = (
            (feed.feed_state_changed, self._on_feed_state),
            (feed.status_received, self._on_status),
            (instances.rows_changed, self._on_rows),
        )
        for signal, slot in self._connections:
            signal.connect(slot)
        self._daemon_ok: bool | None = None

    # --- services -------------------------------------------------------------------------

    @property
    def service(self) -> StoryService:
        """The service without an LLM (sessions, cast, undo, edit, export, re-render)."""
        return StoryService(self.store, renderer=self._renderer())

    def _renderer(self) -> SceneRenderer:
        return SceneRenderer(
            self.store,
            RenderService(self._instances.router),
            daemon_health=self._daemon_health,
            templates=self._templates,
        )

    async def _daemon_health(self) -> bool:
        feed = self._feed.feed
        if feed is None:  # the supervisor says the daemon is down: no need to wait for it
            return False
        return await DaemonHealthGate(feed, timeout=self._health_timeout)()

    async def _turn_service(self) -> StoryService:
        client = await self.backends.client()
        if self._pipeline is None or self._pipeline[0] is not client:
            pipeline = TurnPipeline(
                self.store, client, params=self.backends.agent_params(), renderer=self._renderer()
            )
            self._pipeline = (client, pipeline)
        pipeline = self._pipeline[1]
        pipeline.renderer = self._renderer()  # the router may have been replaced (settings)
        return StoryService(self.store, pipeline=pipeline)

    # --- sessions -------------------------------------------------------------------------

    def refresh_sessions(self) -> None:
        self.sessions_changed.emit(self.store.sessions())

    def open_session(self, session_id: int | None) -> None:
        self.session_id = session_id
        self.reload()

    def reload(self) -> None:
        """Re-read the open session (after every change) and tell the widgets."""
        self.view = self.service.view(self.session_id) if self.session_id is not None else None
        self.view_changed.emit(self.view)
        self.update_readiness()

    def new_session(self, title: str) -> int:
        session = self.service.new_session(title=title.strip() or None)
        self.open_session(session.id)
        self.refresh_sessions()  # after opening it, so the list selects the new one
        return session.id

    def rename_session(self, session_id: int, title: str) -> None:
        if self._guard(lambda: self.service.rename(session_id, title)):
            self.refresh_sessions()
            if session_id == self.session_id:
                self.reload()

    def delete_session(self, session_id: int) -> None:
        if self.busy and session_id == self.session_id:
            self._messages.error("A turn is running in this session: cancel it before deleting the session")
            return
        if self._guard(lambda: self.service.delete(session_id)):
            if session_id == self.session_id:
                self.open_session(None)
            self.refresh_sessions()

    def export(self, fmt: str, path: Path) -> Path | None:
        if self.session_id is None:
            return None
        out = self._guard(lambda: self.service.export(self.session_id, fmt, path))
        if out is not None:
            self._messages.info(f"Story exported to {out}")
        return out

    def save_cast(
        self, characters: tuple[Character, ...], world: tuple[WorldNote, ...], settings: SessionSettings
    ) -> bool:
        if self.session_id is None:
            return False
        done = self._guard(lambda: self.service.set_cast(self.session_id, characters, world, settings))
        if done is not None:
            self._messages.info("Cast and world notes saved")
            self.reload()
        return done is not None

    # --- turns ----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._turn is not None and not self._turn.done()

    def send(self, text: str) -> bool:
        """Start a turn with the player's ``text``; False when it cannot start (said why)."""
        if self.session_id is None:
            self._messages.error("Open or create a session first")
            return False
        if not text.strip():
            return False
        sid = self.session_id
        return self._start_turn(text.strip(), lambda s, emit: s.turn(sid, text, on_event=emit))

    def regenerate(self) -> bool:
        """A new variant (swipe) of the last turn; the old one is kept."""
        if self.session_id is None or self.view is None or not (self.view.turns or self.view.other_turns):
            return False
        sid = self.session_id
        last = self.view.turns[-1].turn.player_input if self.view.turns else ""
        return self._start_turn(last, lambda s, emit: s.regenerate(sid, on_event=emit))

    def _start_turn(self, player_input: str, run: Any) -> bool:
        if self.busy:
            self._messages.error("A turn is already running: wait for it or cancel it")
            return False
        self.stage_states = dict.fromkeys(PANEL_STAGES, "waiting")
        for stage in PANEL_STAGES:
            self.stage_changed.emit(stage, "waiting", "")
        self.turn_started.emit(player_input)
        self._turn = self._tasks.spawn(self._run_turn(run), "story-turn", "The story turn")
        self.busy_changed.emit(True)
        return True

    async def _run_turn(self, run: Any) -> None:
        outcome, detail = "failed", ""
        try:
            service = await self._turn_service()
            result = await run(service, self._on_event)
            if result.scene is None:
                self._set_stage("dreamer", "skipped", "the beat asked for no image")
                self._set_stage("render", "skipped", "")
            outcome = "done"
        except asyncio.CancelledError:
            outcome, detail = "cancelled", "cancelled by the operator"
            for stage, state in self.stage_states.items():
                if state == "running":
                    self._set_stage(stage, "failed", "cancelled")
            raise
        except (NarratesError, LlmError) as exc:
            detail = str(exc)
            self._messages.error(f"The turn failed: {exc}")
        finally:
            self._turn = None
            self.busy_changed.emit(False)
            self.reload()
            self.refresh_sessions()
            self.turn_ended.emit(outcome, detail)

    def cancel(self) -> None:
        if self._turn is not None:
            self._turn.cancel()

    def _set_stage(self, stage: str, state: str, detail: str) -> None:
        self.stage_states[stage] = state
        self.stage_changed.emit(stage, state, detail)

    def _on_event(self, event: Any) -> None:
        """Engine events → signals (called on the loop by the pipeline and the renderer)."""
        if isinstance(event, StageStarted) and event.stage in PANEL_STAGES:
            self._set_stage(event.stage, "running", "")
        elif isinstance(event, StageFinished) and event.stage in PANEL_STAGES:
            self._set_stage(event.stage, "done", f"{event.elapsed_s:.1f} s")
        elif isinstance(event, StageFailed) and event.stage in PANEL_STAGES:
            self._set_stage(event.stage, "failed", event.error)
        elif isinstance(event, StageToken):
            self.prose_token.emit(event.text)
        elif isinstance(event, RenderStarted):
            self._set_stage("render", "running", event.template)
            self.render_progress.emit(0.0)
        elif isinstance(event, RenderProgress) and isinstance(event.event, Progress):
            self.render_progress.emit(event.event.fraction)
        elif isinstance(event, RenderFinished):
            self.render_progress.emit(1.0)
            self._set_stage("render", "done", f"{event.elapsed_s:.1f} s on {event.instance}")
        elif isinstance(event, RenderFailed):
            self._set_stage("render", "failed", event.error)
            if event.kind != "cancelled":
                self._messages.error(
                    f"The scene's render failed ({event.kind}): {event.error.splitlines()[0]}"
                )

    def undo(self) -> None:
        if (
            self.session_id is not None
            and not self.busy
            and self._guard(lambda: self.service.undo(self.session_id))
        ):
            self.reload()
            self.refresh_sessions()

    def edit(self, turn_id: int, prose: str) -> bool:
        if self._guard(lambda: self.service.edit(turn_id, prose)) is None:
            return False
        self.reload()
        return True

    def choose_variant(self, turn_id: int) -> None:
        if not self.busy and self._guard(lambda: self.service.choose_variant(turn_id)):
            self.reload()

    def variants(self, position: int) -> list:
        if self.session_id is None:
            return []
        return [t for t in self.store.variants(self.session_id, position) if t.status == "done"]

    # --- scenes ---------------------------------------------------------------------------

    def rerender(self, scene_id: int, changes: Mapping[str, str], style: str | None = None) -> asyncio.Task:
        """Render ``scene_id`` again with ``changes`` (a new render row; the old ones kept)."""

        async def run() -> None:
            record = None
            try:
                record = await self.service.rerender(
                    scene_id, changes=changes, style=style, on_event=self._on_event
                )
            except NarratesError as exc:
                self._messages.error(f"Re-render refused: {exc}")
            finally:
                self.reload()
                self.rerender_finished.emit(scene_id, record)

        return self._tasks.spawn(run(), "story-rerender", "The re-render")

    def choose_render(self, render_id: int) -> None:
        if self._guard(lambda: self.service.choose_render(render_id)):
            self.reload()

    def renders(self, scene_id: int) -> list:
        return self.store.renders(scene_id)

    def scene(self, scene_id: int):
        return self.store.scene(scene_id)

    # --- health and backend ---------------------------------------------------------------

    def _on_feed_state(self, _state: str, _error: str) -> None:
        self.update_readiness()

    def _on_rows(self, _rows: Any) -> None:
        self.update_readiness()

    def _on_status(self, status: Any) -> None:
        ok = status.status == "ok"
        if ok != self._daemon_ok:
            self.update_readiness()

    def _on_llm_child(self, event: Any) -> None:
        """The embedded LLM server's supervision, in words (its output goes to the log only)."""
        if isinstance(event, Restarting):
            self._messages.error(f"The embedded LLM stopped ({event.reason}); restarting it")
        elif isinstance(event, GaveUp):
            self._messages.error(f"The embedded LLM gave up: {event.reason}")
        elif isinstance(event, Output):
            log.debug("embedded LLM %s: %s", event.stream, event.line)

    def update_readiness(self) -> None:
        """Recompute what the next turn's render will do (daemon, the style's instances)."""
        if self.view is None:
            return
        settings = self.view.session.settings
        status = self._feed.last_status
        up = self._feed.state == "connected" and status is not None and status.status == "ok"
        self._daemon_ok = up
        detail = (
            "" if up else ("not running" if self._feed.feed is None else f"status feed {self._feed.state}")
        )
        self.readiness = render_readiness(
            settings.template,
            settings.style,
            daemon_up=up,
            daemon_detail=detail,
            instances=self._instances.router.serving(settings.style),
            templates=self._templates,
        )
        self.readiness_changed.emit(self.readiness)

    def choose_backend(self, choice: BackendChoice) -> asyncio.Task:
        async def run() -> None:
            if self.busy:
                self._messages.error("Change the LLM after the running turn")
                return
            try:
                effective = await self.backends.choose(choice)
                if choice.mode == "embedded" and effective.kind == "embedded":
                    # the operator picked it: start it now (it takes a while), supervised by the manager
                    await self.backends.client()
                    self._messages.info("The embedded LLM is running")
            except Exception as exc:  # an llm.toml error, a missing runtime: said in the picker, and here
                self._messages.error(f"LLM backend: {exc}")

        return self._tasks.spawn(run(), "story-backend", "Choosing the LLM backend")

    def refresh_backend(self) -> asyncio.Task:
        async def run() -> None:
            await self.backends.discover()
            try:  # resolve notifies the picker, with what discovery found
                await self.backends.resolve()
            except Exception as exc:
                self._messages.error(f"LLM backend: {exc}")

        return self._tasks.spawn(run(), "story-discover", "Looking for LLM servers")

    def _guard(self, action: Any) -> Any:
        try:
            result = action()
        except (NarratesError, OSError) as exc:
            self._messages.error(str(exc))
            return None
        return True if result is None else result

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, what: str) -> asyncio.Task:
        return self._tasks.spawn(coro, name, what)

    async def aclose(self) -> None:
        """Cancel the running turn and re-renders, stop the LLM (the embedded child), close the store."""
        await self._tasks.cancel_all()
        await self.backends.aclose()
        self.store.close()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for signal, slot in self._connections:
            signal.disconnect(slot)
        self._pipeline = None
