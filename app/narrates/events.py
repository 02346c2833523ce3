"""Typed progress events of a turn and of a render, for the GUI's story panel and ``luna story``.

A turn emits, for every stage in order, :class:`StageStarted`, any number of :class:`StageToken`
(the Writer's prose as it streams), then :class:`StageFinished` with the stage's timing — or
:class:`StageFailed`, which ends the turn. Renders emit :class:`RenderStarted`,
:class:`RenderProgress` (the ComfyUI layer's own events, unchanged) and :class:`RenderFinished`
or :class:`RenderFailed`. Listeners are plain callables called on the pipeline's loop; an
exception in one is logged and the turn goes on.

Pure data; any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageStarted:
    """A pipeline stage began work on the turn."""

    turn_id: int
    stage: str


@dataclass(frozen=True)
class StageToken:
    """A piece of streamed text from a stage (the Writer's prose as it arrives)."""

    turn_id: int
    stage: str
    text: str


@dataclass(frozen=True)
class StageFinished:
    """``output`` is the stage's JSON-able output as stored; ``elapsed_s`` its wall time."""

    turn_id: int
    stage: str
    output: Any
    elapsed_s: float
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class StageFailed:
    """A stage failed and so did the turn; the earlier stages stay stored."""

    turn_id: int
    stage: str
    error: str


@dataclass(frozen=True)
class RenderStarted:
    """A ``renders`` row was opened for a scene; the render is on its way."""

    scene_id: int
    render_id: int
    style: str | None
    template: str


@dataclass(frozen=True)
class RenderProgress:
    """A render-service event (queue, progress, preview …) of an open render row."""

    scene_id: int
    render_id: int
    event: Any  # an app.comfy.events / render-service event


@dataclass(frozen=True)
class RenderFinished:
    """A render row closed ``done``: its stored image files and what produced them."""

    scene_id: int
    render_id: int
    files: tuple[str, ...]
    seed: int | None
    instance: str | None
    elapsed_s: float


@dataclass(frozen=True)
class RenderFailed:
    """A render row closed ``failed``; ``kind`` is its error kind (``invalid``, ``unavailable``, …)."""

    scene_id: int
    render_id: int
    kind: str
    error: str


@dataclass(frozen=True)
class Notice:
    """Something the operator should know that does not stop the turn (e.g. the summary was kept)."""

    turn_id: int | None
    message: str


NarratesEvent = (
    (
        StageStarted
        | StageToken
        | StageFinished
        | StageFailed
        | RenderStarted
        | RenderProgress
        | RenderFinished
    )
    | RenderFailed
    | Notice
)
EventListener = Callable[[Any], None]
