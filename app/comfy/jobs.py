"""Job tracking: per-job state, the per-job event stream, and routing of WebSocket events to jobs.

Owns :class:`Job` (one submitted prompt on one instance: state, progress, collected outputs,
an async iterator of its typed events, completion) and :class:`JobTracker` (routes every parsed
event of one instance's socket to its job, buffers events that arrive before the job is known —
old servers make their own ``prompt_id``, so events can beat the ``POST /prompt`` reply — and
attributes id-less messages: legacy type-1 previews and old ``progress`` go to the prompt that
was last seen running).

Completion rules (ComfyUI's ``execution.py`` and ``server.py`` send these): ``execution_success`` ends the job but history
may not be written yet; ``executing`` with ``node: null`` for the prompt means "history written"
and, on old servers without ``execution_success``, also "finished"; ``execution_error`` and
``execution_interrupted`` end it with a reason. The outcome of a job finished by ``executing``
null alone is decided by its history entry (the client does that).

Runs on the client's event loop only (not thread-safe), no I/O of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.comfy.errors import ExecutionFailed, JobFailed, JobInterrupted, JobLost, NodeReason
from app.comfy.events import (
    ComfyEvent,
    ConnectionLost,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    PreviewImage,
    Progress,
    ProgressState,
)
from app.comfy.replay import EventReplay
from app.comfy.results import HistoryEntry

log = logging.getLogger(__name__)

JobSink = Callable[[ComfyEvent], None]


class JobState(enum.Enum):
    """Where a job is; the last four are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"  # ComfyUI is done with it; outcome read from history by the client
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of a job's progress for progress bars (CLI, GUI).

    ``fraction`` is overall: nodes done (run or cached) over nodes in the prompt, plus the
    running node's step fraction.
    """

    prompt_id: str
    state: JobState
    node: str | None
    node_value: float
    node_max: float
    nodes_done: int
    nodes_total: int
    cached: int

    @property
    def fraction(self) -> float:
        if self.state.terminal and self.state is not JobState.FAILED:
            return 1.0
        if not self.nodes_total:
            return 0.0
        step = self.node_value / self.node_max if self.node_max else 0.0
        return min(1.0, (self.nodes_done + min(1.0, step)) / self.nodes_total)


class Job:
    """One prompt submitted to one instance; fed by :class:`JobTracker`, read by any task.

    ``events()`` gives an async iterator over the job's typed events from its start (late
    subscribers get a replay) that ends after the terminal event; ``subscribe(sink)`` calls a
    function with the same events (replay first), synchronously, for routers that re-publish
    them; ``wait_finished()`` waits for the end. ``error`` holds the :class:`JobFailed` of a job
    that did not succeed.

    ``outputs_complete`` tells the client whether the ``executed`` events already said
    everything the history entry would (see :meth:`ComfyClient.wait`): the job ended with an
    ``execution_success`` seen live, the socket never dropped while it ran, no ``executed``
    came without its output, and the prompt was not served wholly from the cache.
    """

    def __init__(
        self, prompt_id: str, instance: str, prompt: Mapping[str, Any], *, wants_previews: bool = False
    ) -> None:
        self.prompt_id = prompt_id
        self.instance = instance
        self.prompt = prompt
        self.wants_previews = wants_previews
        self.number: float | None = None
        self.warnings: tuple[NodeReason, ...] = ()
        self.state = JobState.QUEUED
        self.started = False
        self.error: JobFailed | None = None
        self.cached_nodes: set[str] = set()
        self.executed_nodes: set[str] = set()
        self.outputs: dict[str, Mapping[str, Any]] = {}
        self.node: str | None = None
        self.node_value = 0.0
        self.node_max = 0.0
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.last_event_at = self.submitted_at
        self.history_written = asyncio.Event()
        self._finished = asyncio.Event()
        self.cancel_outcome: str | None = None  # what the first cancel() through the client did
        self.success_seen_live = False  # execution_success arrived on the socket
        self.socket_dropped = False  # a ConnectionLost happened while the job was tracked
        self.output_missing = False  # an `executed` came with output None (cached, newer executors)
        self._early: list[ComfyEvent] = []
        self._sinks: list[JobSink] = []
        self._accepted = False
        self._log: EventReplay[ComfyEvent] = EventReplay(lambda: self._finished.is_set() and self._accepted)

    # --- reading ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    async def events(self) -> AsyncIterator[ComfyEvent]:
        """Every event of this job, in order, ending after the terminal one."""
        async for event in self._log.follow():
            yield event

    @property
    def progress(self) -> JobProgress:
        done = len(self.executed_nodes | self.cached_nodes)
        return JobProgress(
            self.prompt_id,
            self.state,
            self.node,
            self.node_value,
            self.node_max,
            done,
            len(self.prompt),
            len(self.cached_nodes),
        )

    @property
    def outputs_complete(self) -> bool:
        """True when :attr:`outputs` (from ``executed``) is all the history would list."""
        fully_cached = bool(self.prompt) and set(self.prompt) <= self.cached_nodes
        return (
            self.state is JobState.SUCCEEDED
            and self.success_seen_live
            and not self.socket_dropped
            and not self.output_missing
            and not fully_cached
        )

    def subscribe(self, sink: JobSink) -> None:
        """Call ``sink(event)`` for every event of the stream: the ones so far now, then each new one."""
        for event in self._log:
            self._deliver(sink, event)
        self._sinks.append(sink)

    # --- feeding ---------------------------------------------------------------------------

    def _deliver(self, sink: JobSink, event: ComfyEvent) -> None:
        try:
            sink(event)
        except Exception:  # a broken consumer must not stop the job's bookkeeping
            log.exception("job %s: event sink failed", self.prompt_id)

    def _publish(self, events: list[ComfyEvent]) -> None:
        self.last_event_at = time.monotonic()
        self._log.extend(events)
        for sink in list(self._sinks):
            for event in events:
                self._deliver(sink, event)

    def _append(self, event: ComfyEvent) -> None:
        if not self._accepted:
            self._early.append(event)  # events that beat the POST reply wait behind JobQueued
            return
        self._publish([event])

    def note(self, event: ComfyEvent) -> None:
        """Add a client-side event (connection lost, reconnected, …) to the stream."""
        if isinstance(event, ConnectionLost):
            self.socket_dropped = True
        self._append(event)

    def accepted(self, queued: ComfyEvent) -> None:
        """The server accepted the job: ``queued`` (JobQueued) opens the stream, then early events."""
        self._accepted = True
        early, self._early = self._early, []
        self._publish([queued, *early])

    def mark_running(self) -> None:
        if not self.started:
            self.started = True
            self.started_at = time.monotonic()
        if self.state is JobState.QUEUED:
            self.state = JobState.RUNNING

    def feed(self, event: ComfyEvent) -> None:
        """Apply one event that belongs to this job."""
        if isinstance(event, Executing) and event.node is None:
            self.history_written.set()
        if self.done:
            return
        if isinstance(event, ExecutionStart):
            self.mark_running()
        elif isinstance(event, ExecutionCached):
            self.mark_running()
            self.cached_nodes.update(event.nodes)
        elif isinstance(event, Executing):
            if event.node is None:
                self._append(event)
                self._finish(JobState.FINISHED, None)
                return
            self.mark_running()
            if self.node is not None and self.node != event.node:
                self.executed_nodes.add(self.node)
            self.node, self.node_value, self.node_max = event.node, 0.0, 0.0
        elif isinstance(event, Progress):
            self.mark_running()
            if event.node is not None:
                self.node = event.node
            self.node_value, self.node_max = event.value, event.max
        elif isinstance(event, ProgressState):
            self.mark_running()
            for node_id, state in event.nodes.items():
                if state.state == "finished":
                    self.executed_nodes.add(node_id)
        elif isinstance(event, Executed):
            self.mark_running()
            self.executed_nodes.add(event.node)
            if event.output:
                self.outputs[event.node] = event.output
            elif event.output is None:
                self.output_missing = True
        elif isinstance(event, PreviewImage):
            if not self.wants_previews:
                return
        elif isinstance(event, ExecutionSuccess):
            self.success_seen_live = True
            self._append(event)
            self._finish(JobState.SUCCEEDED, None)
            return
        elif isinstance(event, ExecutionError):
            self._append(event)
            self._finish(
                JobState.FAILED,
                ExecutionFailed(
                    prompt_id=self.prompt_id,
                    node_id=event.node_id,
                    node_type=event.node_type,
                    exception_type=event.exception_type,
                    exception_message=event.exception_message,
                    traceback=event.traceback,
                    executed=event.executed,
                    current_inputs=event.current_inputs,
                    instance=self.instance,
                ),
            )
            return
        elif isinstance(event, ExecutionInterrupted):
            self._append(event)
            self._finish(
                JobState.INTERRUPTED,
                JobInterrupted(
                    prompt_id=self.prompt_id,
                    node_id=event.node_id,
                    node_type=event.node_type,
                    executed=event.executed,
                    instance=self.instance,
                ),
            )
            return
        self._append(event)

    def _finish(self, state: JobState, error: JobFailed | None) -> None:
        if self.done:
            return
        if (
            not self._accepted
            and error is not None
            and not isinstance(error, (ExecutionFailed, JobInterrupted))
        ):
            self._accepted = True  # failed before the reply (lost): nothing will open the stream
            early, self._early = self._early, []
            self._log.extend(early)
        if self.node is not None and state in (JobState.SUCCEEDED, JobState.FINISHED):
            self.executed_nodes.add(self.node)
        self.state = state
        self.error = error
        self.finished_at = time.monotonic()
        self._finished.set()
        self._log.wake()

    def fail(self, error: JobFailed) -> None:
        """End the job from outside the event stream (lost, cancelled while pending)."""
        state = (
            JobState.LOST
            if isinstance(error, JobLost)
            else JobState.INTERRUPTED
            if isinstance(error, JobInterrupted)
            else JobState.FAILED
        )
        self._finish(state, error)

    def finish_from_history(self, entry: HistoryEntry) -> None:
        """End the job from its history entry (after a reconnect missed the terminal event)."""
        self.history_written.set()
        if self.done:
            return
        if entry.execution_started:
            self.mark_running()
        for node_id, output in entry.outputs.items():
            self.outputs.setdefault(node_id, output)
        error = entry.error_for(self.prompt_id, self.instance)
        if error is None:
            self._finish(JobState.SUCCEEDED, None)
        else:
            self._finish(
                JobState.INTERRUPTED if isinstance(error, JobInterrupted) else JobState.FAILED, error
            )


class JobTracker:
    """Routes one instance's events to its jobs; see the module docstring."""

    def __init__(self, *, orphan_limit: int = 64, keep_finished: int = 256) -> None:
        self.jobs: dict[str, Job] = {}
        self._keep_finished = keep_finished
        self._orphans: OrderedDict[str, list[ComfyEvent]] = OrderedDict()
        self._orphan_limit = orphan_limit
        self._current_prompt: str | None = None
        self._current_node: str | None = None

    @property
    def active(self) -> list[Job]:
        return [job for job in self.jobs.values() if not job.done]

    @property
    def wants_previews(self) -> bool:
        return any(job.wants_previews for job in self.jobs.values() if not job.done)

    def register(self, job: Job) -> None:
        self.jobs[job.prompt_id] = job
        if len(self.jobs) > self._keep_finished * 2:
            # Long-running apps submit thousands of jobs: keep only recent finished ones.
            finished = [pid for pid, known in self.jobs.items() if known.done]
            for pid in finished[: len(finished) - self._keep_finished]:
                del self.jobs[pid]
        for event in self._orphans.pop(job.prompt_id, []):
            job.feed(event)

    def rekey(self, job: Job, prompt_id: str) -> None:
        """The server chose another id than ours: track the job under the server's id."""
        if self.jobs.get(job.prompt_id) is job:
            del self.jobs[job.prompt_id]
        job.prompt_id = prompt_id
        self.register(job)

    def forget(self, prompt_id: str) -> None:
        self.jobs.pop(prompt_id, None)

    def feed(self, event: ComfyEvent) -> Job | None:
        """Route one parsed event; returns the job it went to (None: not a job event or unknown)."""
        prompt_id = getattr(event, "prompt_id", None)
        if isinstance(event, (ExecutionStart, ExecutionCached)):
            self._current_prompt, self._current_node = event.prompt_id, None
        elif isinstance(event, Executing):
            if prompt_id is None:
                prompt_id = self._current_prompt  # re-sent on reconnect without an id
                event = dataclasses.replace(event, prompt_id=prompt_id)
            if event.node is None:
                if prompt_id == self._current_prompt:
                    self._current_prompt = None
            else:
                self._current_prompt, self._current_node = prompt_id, event.node
        elif isinstance(event, Progress):
            if prompt_id is None:
                prompt_id = self._current_prompt
                event = dataclasses.replace(event, prompt_id=prompt_id, node=event.node or self._current_node)
            else:
                self._current_prompt = prompt_id
            self._current_node = event.node or self._current_node
        elif isinstance(event, PreviewImage) and prompt_id is None:
            prompt_id = self._current_prompt
            event = dataclasses.replace(event, prompt_id=prompt_id, node_id=self._current_node)
        if prompt_id is None:
            return None
        job = self.jobs.get(prompt_id)
        if job is None:
            self._keep_orphan(prompt_id, event)
            return None
        job.feed(event)
        return job

    def _keep_orphan(self, prompt_id: str, event: ComfyEvent) -> None:
        if isinstance(event, PreviewImage):
            return  # never buffer image bytes for jobs that are not ours
        bucket = self._orphans.setdefault(prompt_id, [])
        self._orphans.move_to_end(prompt_id)
        if len(bucket) < 256:
            bucket.append(event)
        while len(self._orphans) > self._orphan_limit:
            self._orphans.popitem(last=False)
