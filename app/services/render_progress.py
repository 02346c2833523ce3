"""Render progress for a display: the render service's and ComfyUI's events → one bar and one line.

Owns the reading of a render's event stream (:data:`app.comfy.render.RenderEvent` and
:data:`app.comfy.events.ComfyEvent`) as a progress bar value (steps of the node running now)
and a sentence an operator understands ("Queued on comfyui-anime", "'KSampler' (#3): step 4 of
20"). Any panel that shows a render (template editor test render, story scenes) uses it.
Pure Python; one owner, the thread that feeds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.comfy.events import (
    Executing,
    ExecutionCached,
    ExecutionStart,
    ExecutionSuccess,
    JobCancelled,
    JobQueued,
    JobResubmitted,
    Progress,
)
from app.comfy.graph import describe_node
from app.comfy.render import ImageUploaded, PromptPrepared, StyleFallback, TemplateNote


@dataclass(frozen=True)
class ProgressView:
    """What to show: ``value`` of ``maximum`` (``maximum`` 0 = busy, no steps known) and a line."""

    value: int
    maximum: int
    text: str


class RenderProgress:
    """Folds events into :class:`ProgressView` s; :meth:`update` returns None for events that
    change nothing on screen (status broadcasts, previews)."""

    def __init__(self) -> None:
        self.workflow: Mapping[str, Any] = {}
        self.instance = ""
        self.cached = 0
        self.view = ProgressView(0, 0, "Preparing…")

    def _node(self, node: str | None) -> str:
        if node is None:
            return "a node"
        return describe_node(self.workflow, node) if node in self.workflow else f"node #{node}"

    def update(self, event: object) -> ProgressView | None:
        view: ProgressView | None = None
        if isinstance(event, TemplateNote):
            view = ProgressView(0, 0, event.text)
        elif isinstance(event, StyleFallback):
            view = ProgressView(0, 0, f"no instance serves '{event.requested}'; using '{event.used}'")
        elif isinstance(event, ImageUploaded):
            view = ProgressView(0, 0, f"uploaded {event.path.name} for '{event.param}' to {event.instance}")
        elif isinstance(event, PromptPrepared):
            self.workflow, self.instance = event.workflow, event.instance
            view = ProgressView(0, 0, f"Prompt checked against {event.instance}; submitting")
        elif isinstance(event, JobQueued):
            view = ProgressView(0, 0, f"Queued on {event.instance}")
        elif isinstance(event, JobResubmitted):
            view = ProgressView(0, 0, f"{event.instance} lost the job ({event.reason}); resubmitted")
        elif isinstance(event, ExecutionStart):
            view = ProgressView(0, 0, f"Running on {self.instance or 'the instance'}")
        elif isinstance(event, ExecutionCached):
            self.cached = len(event.nodes)
            view = ProgressView(0, 0, f"{self.cached} node(s) reused from the instance's cache")
        elif isinstance(event, Executing):
            if event.node is None:
                view = ProgressView(1, 1, "Finished; fetching the image")
            else:
                view = ProgressView(0, 0, f"Running {self._node(event.node)}")
        elif isinstance(event, Progress):
            maximum = max(1, int(event.max))
            value = min(maximum, int(event.value))
            view = ProgressView(value, maximum, f"{self._node(event.node)}: step {value} of {maximum}")
        elif isinstance(event, ExecutionSuccess):
            view = ProgressView(1, 1, "Finished; fetching the image")
        elif isinstance(event, JobCancelled):
            view = ProgressView(0, 1, f"Cancelled ({event.outcome})")
        if view is not None:
            self.view = view
        return view
