"""One turn: Preprocessor → Strategist → Writer → Dreamer, then the scene's render.

:class:`TurnPipeline` owns the order of the stages and the commit discipline:

* the turn row is committed ``running`` before the first stage; each stage's output is
  committed in its own transaction the moment it is ready (the Writer's prose with it), so a
  process killed mid-turn keeps every finished stage (:mod:`app.narrates.store` marks the turn
  ``interrupted`` at the next start);
* a failing stage fails the turn with :class:`~app.narrates.errors.StageFailed` naming the stage;
  the earlier stages stay committed; a regenerate starts the position again as a new variant;
* the turn is ``done`` once its text and its scene are stored; the render comes after and can
  only fail itself (its row says why), never the turn;
* every stage reports :class:`~app.narrates.events.StageStarted`, the Writer's
  :class:`~app.narrates.events.StageToken` pieces, and :class:`~app.narrates.events.StageFinished`
  with its timing (or :class:`~app.narrates.events.StageFailed`).

Before the stages, turns that dropped out of the context window are folded into the rolling
summary (:mod:`app.narrates.agents.summarizer`); a failing summary is reported as a
:class:`~app.narrates.events.Notice` and the turn goes on with the old one.

Runs on one asyncio loop (the caller's); the store is used from that loop only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from app.narrates.agents import dreamer, preprocessor, strategist, summarizer, writer
from app.narrates.context import StoryContext, TokenBudget
from app.narrates.errors import StageFailed
from app.narrates.events import EventListener, Notice, StageFinished, StageStarted, StageToken
from app.narrates.events import StageFailed as StageFailedEvent
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import AgentSettings
from app.narrates.llm.errors import LlmError
from app.narrates.model import Action, Beat, ScenePlan
from app.narrates.prompts import PromptError, PromptLibrary
from app.narrates.rendering import SceneRenderer, TemplateCache
from app.narrates.store import RenderRecord, SceneRecord, SessionStore, StageRecord, TurnRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PARAMS: dict[str, AgentSettings] = {
    preprocessor.NAME: preprocessor.DEFAULTS,
    strategist.NAME: strategist.DEFAULTS,
    writer.NAME: writer.DEFAULTS,
    dreamer.NAME: dreamer.DEFAULTS,
    summarizer.NAME: summarizer.DEFAULTS,
}


@dataclass(frozen=True)
class TurnOutcome:
    """A finished turn: its row, each stage's typed output, its scene and the render (if any)."""

    turn: TurnRecord
    action: Action
    beat: Beat
    prose: str
    scene: SceneRecord | None
    render: RenderRecord | None
    stages: Mapping[str, StageRecord]


def _safe(listener: EventListener | None) -> Callable[[Any], None]:
    def emit(event: Any) -> None:
        if listener is None:
            return
        try:
            listener(event)
        except Exception:  # a broken display must not fail the turn
            log.exception("a turn event listener failed on %r", type(event).__name__)

    return emit


class TurnPipeline:
    """Runs turns of stored sessions (see the module docstring)."""

    def __init__(
        self,
        store: SessionStore,
        llm: LlmClient,
        *,
        prompts: PromptLibrary | None = None,
        params: Mapping[str, AgentSettings] | None = None,
        renderer: SceneRenderer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        self.prompts = prompts or PromptLibrary()
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.renderer = renderer
        self.templates = renderer.templates if renderer is not None else TemplateCache()
        self.budget = TokenBudget(llm.count_tokens)
        self.rng = rng or random.SystemRandom()

    def _model(self, stage: str) -> str | None:
        return self.params[stage].model or self.llm.backend.model

    async def _stage(
        self,
        turn_id: int,
        stage: str,
        work: Awaitable[T],
        output: Callable[[T], Any],
        emit: Callable[[Any], None],
        *,
        prose: Callable[[T], str] | None = None,
    ) -> T:
        emit(StageStarted(turn_id, stage))
        started, clock = time.time(), time.perf_counter()
        try:
            value = await work
        except LlmError as exc:
            raise StageFailed(stage, str(exc), turn_id=turn_id) from exc
        except PromptError as exc:
            raise StageFailed(stage, str(exc), turn_id=turn_id, llm=False) from exc
        elapsed = time.perf_counter() - clock
        record = StageRecord(stage, output(value), self._model(stage), started, elapsed)
        self.store.save_stage(turn_id, record, prose=prose(value) if prose else None)
        emit(StageFinished(turn_id, stage, record.output, elapsed, record.model))
        return value

    async def _context(self, session, timeline, characters, world, scan: str) -> StoryContext:
        return await self.budget.build(
            context_tokens=session.settings.context_tokens,
            response_tokens=self.params[writer.NAME].max_tokens,
            characters=characters,
            world=world,
            summary=session.summary,
            summary_through=session.summary_through,
            timeline=timeline,
            scan_extra=scan,
        )

    async def run_turn(
        self,
        session_id: int,
        player_input: str,
        *,
        position: int | None = None,
        style: str | None = None,
        instance: str | None = None,
        render: bool = True,
        on_event: EventListener | None = None,
    ) -> TurnOutcome:
        """Run one turn (a new one, or a new variant of ``position``); raises :class:`StageFailed`."""
        emit = _safe(on_event)
        session = self.store.session(session_id)
        characters = self.store.characters(session_id)
        world = self.store.world_notes(session_id)
        backend = {
            "name": self.llm.backend.name,
            "base_url": self.llm.backend.base_url,
            "model": self.llm.backend.model,
        }
        turn = self.store.start_turn(session_id, player_input, position=position, backend=backend)
        timeline = [t for t in self.store.timeline(session_id) if t.position < turn.position]
        stage = "summary"
        try:
            context = await self._context(session, timeline, characters, world, player_input)
            if context.to_summarize:
                session = await self._summarize(turn.id, session, context, emit)
                context = await self._context(session, timeline, characters, world, player_input)

            stage = preprocessor.NAME
            action = await self._stage(
                turn.id,
                stage,
                preprocessor.run(
                    self.llm,
                    self.prompts.get(stage),
                    self.params[stage],
                    player_input=player_input,
                    characters=characters,
                    world=world,
                    last_prose=timeline[-1].prose or "" if timeline else "",
                ),
                Action.as_dict,
                emit,
            )
            names = " ".join(e.name for e in action.entities)
            context = await self._context(session, timeline, characters, world, f"{player_input}\n{names}")

            stage = strategist.NAME
            beat = await self._stage(
                turn.id,
                stage,
                strategist.run(
                    self.llm,
                    self.prompts.get(stage),
                    self.params[stage],
                    action=action,
                    context=context,
                    settings=session.settings,
                    characters=characters,
                ),
                Beat.as_dict,
                emit,
            )

            stage = writer.NAME
            prose = await self._stage(
                turn.id,
                stage,
                writer.run(
                    self.llm,
                    self.prompts.get(stage),
                    self.params[stage],
                    action=action,
                    beat=beat,
                    context=context,
                    settings=session.settings,
                    on_text=lambda text: emit(StageToken(turn.id, writer.NAME, text)),
                ),
                lambda p: {
                    "prose": p.text,
                    "raw": p.raw,
                    "finish_reason": p.finish_reason,
                    "pieces": p.pieces,
                },
                emit,
                prose=lambda p: p.text,
            )

            scene: SceneRecord | None = None
            if beat.image_worthy or action.wants_image or action.mode == "see":
                stage = dreamer.NAME
                plan: ScenePlan = await self._stage(
                    turn.id,
                    stage,
                    dreamer.run(
                        self.llm,
                        self.prompts.get(stage),
                        self.params[stage],
                        prose=prose.text,
                        characters=characters,
                        present=beat.present,
                        settings=session.settings,
                        style=style or session.settings.style,
                        rng=self.rng,
                    ),
                    ScenePlan.as_dict,
                    emit,
                )
                scene = self.store.add_scene(turn.id, plan, self.templates.hash_of(plan.template))
        except StageFailed as exc:
            self.store.fail_turn(turn.id, exc.stage, exc.reason)
            emit(StageFailedEvent(turn.id, exc.stage, exc.reason))
            raise
        except asyncio.CancelledError:
            self.store.fail_turn(turn.id, stage, "cancelled by the operator")
            emit(StageFailedEvent(turn.id, stage, "cancelled"))
            raise
        except Exception as exc:  # a bug must not leave a turn 'running' until the next start
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self.store.fail_turn(turn.id, stage, reason)
            emit(StageFailedEvent(turn.id, stage, reason))  # listeners hear of every failed turn
            raise
        done = self.store.finish_turn(turn.id)
        rendered = None
        if scene is not None and render and self.renderer is not None:
            rendered = await self.renderer.render(scene, style=style, instance=instance, on_event=emit)
        return TurnOutcome(done, action, beat, prose.text, scene, rendered, self.store.stages(turn.id))

    async def _summarize(self, turn_id: int, session, context: StoryContext, emit: Callable[[Any], None]):
        turns = context.to_summarize
        emit(StageStarted(turn_id, summarizer.NAME))
        clock = time.perf_counter()
        try:
            text = await summarizer.run(
                self.llm,
                self.prompts.get(summarizer.NAME),
                self.params[summarizer.NAME],
                summary=session.summary,
                turns=turns,
            )
        except (LlmError, PromptError) as exc:
            message = f"the rolling summary was not updated ({exc}); older turns are left out of the context"
            log.info("turn %s: %s", turn_id, message)
            emit(Notice(turn_id, message))
            return session
        self.store.set_summary(session.id, text, turns[-1].position)
        emit(
            StageFinished(
                turn_id,
                summarizer.NAME,
                {"summary": text},
                time.perf_counter() - clock,
                self._model(summarizer.NAME),
            )
        )
        return self.store.session(session.id)
