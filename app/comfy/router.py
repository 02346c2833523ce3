"""Style router: sends each render to a healthy ComfyUI instance that serves its style.

Owns one :class:`~app.comfy.client.ComfyClient` per configured instance, a background health
task per instance, and the dispatch of jobs:

* **health** — ``/system_stats`` + ``GET /prompt`` every ``health_interval`` seconds; a failure
  marks the instance unhealthy and the next probes back off exponentially (capped at
  ``health_backoff_max``); one good probe makes it healthy again. A dropped WebSocket triggers
  an immediate probe. Unhealthy instances get no new jobs until they recover.
* **choice** — among healthy instances serving the style (unknown styles use the configured
  default style), the one with the least load, where load is the larger of the live
  ``queue_remaining`` (status events + probes; counts other clients' jobs too) and our own jobs
  in flight there — weighted by each instance's measured render time (moving average of
  ``execution_start`` → finish), i.e. the earliest expected finish ``(load + 1) × job time``.
  With equal speeds this is plain least ``queue_remaining``; with uneven GPUs it stops handing
  the slow one work a fast one would finish sooner. Ties go to config order.
* **first-free dispatch** — at most ``max_in_flight_per_instance`` of our jobs sit on one
  instance; further jobs wait in the router and go to whichever instance frees up first. This
  is what keeps a slow GPU from being handed an equal share of a burst (SwarmUI #247).
* **jobs** — :meth:`StyleRouter.submit` returns a :class:`RoutedJob` at once (our prompt id, an
  async iterator of typed :data:`~app.comfy.events.ComfyEvent` s, ``cancel()``, ``result()``);
  :meth:`StyleRouter.run` is submit + result. A job is either a fixed API prompt or a
  :data:`Prepare` callback that builds it on the chosen instance, so uploads, validation and
  the run share one instance (``instance=`` pins a job to a named one);
* **resubmit** — a job whose instance lost it before it started (``JobLost.resubmittable``, or
  a submit that certainly never reached the server) is prepared again and sent (same seed, so
  the same image) to another healthy instance of the style, up to ``resubmit_attempts`` times.
  A ``POST /prompt`` that may have been accepted is first looked up on its instance by our own
  prompt id (:meth:`ComfyClient.submit`), so a job never runs twice; a failure after the job
  was accepted (a download) is never resubmitted.
* **observability** — :meth:`StyleRouter.snapshot` (per-instance health, queue, VRAM, versions,
  jobs in flight, timings), :meth:`add_listener` (called on every change), :meth:`watch` (async
  iterator of snapshots) and :meth:`wait_until` for the GUI dashboard, the CLI and tests.

Runs on one asyncio event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.errors import ComfyError, ComfyUnavailable, JobLost, NoInstanceAvailable
from app.comfy.events import (
    ComfyEvent,
    ConnectionLost,
    JobCancelled,
    JobResubmitted,
    Reconnected,
    StatusEvent,
)
from app.comfy.instances import InstanceConfig, InstancesConfig, load_instances
from app.comfy.jobs import Job
from app.comfy.replay import EventReplay
from app.comfy.results import DeviceStats, JobResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterSettings:
    """Tuning of the router (seconds unless named otherwise)."""

    health_interval: float = 2.0
    health_backoff_max: float = 30.0
    probe_timeout: float = 3.0
    max_in_flight_per_instance: int = 2
    resubmit_attempts: int = 2
    no_instance_timeout: float = 30.0  # how long a job waits for an instance of its style to be healthy
    timeouts: ComfyTimeouts = field(default_factory=ComfyTimeouts)


@dataclass(frozen=True)
class InstanceSnapshot:
    """What the dashboard shows for one instance (VRAM in bytes, of the device ComfyUI uses)."""

    name: str
    base_url: str
    styles: tuple[str, ...]
    state: str  # "unknown" (not probed yet), "healthy", "unhealthy"
    connected: bool
    last_error: str | None
    queue_remaining: int | None
    jobs_in_flight: int
    jobs_waiting_here: int
    jobs_done: int
    jobs_failed: int
    mean_job_seconds: float | None
    comfyui_version: str | None
    vram_total: int | None
    vram_free: int | None
    devices: tuple[DeviceStats, ...]
    consecutive_failures: int
    last_checked: float | None  # time.time() of the last probe

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


@dataclass(frozen=True)
class RouterSnapshot:
    """All instances plus the jobs waiting in the router for a free instance."""

    instances: tuple[InstanceSnapshot, ...]
    jobs_waiting: int
    taken_at: float

    def by_name(self, name: str) -> InstanceSnapshot:
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise KeyError(name)


class _Member:
    """Router-side state of one instance (owned by the router's loop)."""

    def __init__(self, config: InstanceConfig, client: ComfyClient, order: int) -> None:
        self.config = config
        self.client = client
        self.order = order
        self.state = "unknown"
        self.last_error: str | None = None
        self.queue_remaining: int | None = None
        self.in_flight = 0
        self.done = 0
        self.failed = 0
        self.mean_seconds: float | None = None
        self.stats_version: str | None = None
        self.devices: tuple[DeviceStats, ...] = ()
        self.failures = 0
        self.last_checked: float | None = None
        self.probe_now = asyncio.Event()

    @property
    def load(self) -> int:
        live = self.client.queue_remaining_seen
        seen = live if live is not None else (self.queue_remaining or 0)
        return max(seen, self.in_flight)

    def record_duration(self, seconds: float) -> None:
        self.mean_seconds = seconds if self.mean_seconds is None else 0.7 * self.mean_seconds + 0.3 * seconds

    def snapshot(self) -> InstanceSnapshot:
        primary = self.devices[0] if self.devices else None
        live = self.client.queue_remaining_seen
        return InstanceSnapshot(
            name=self.config.name,
            base_url=self.config.base_url,
            styles=self.config.styles,
            state=self.state,
            connected=self.client.connected,
            last_error=self.last_error,
            queue_remaining=live if live is not None else self.queue_remaining,
            jobs_in_flight=self.in_flight,
            jobs_waiting_here=max(0, (live or 0) - self.in_flight),
            jobs_done=self.done,
            jobs_failed=self.failed,
            mean_job_seconds=self.mean_seconds,
            comfyui_version=self.stats_version,
            vram_total=primary.vram_total if primary else None,
            vram_free=primary.vram_free if primary else None,
            devices=self.devices,
            consecutive_failures=self.failures,
            last_checked=self.last_checked,
        )


SnapshotListener = Callable[[RouterSnapshot], None]


class StyleRouter:
    """Routes renders by style over several ComfyUI instances; see the module docstring.

    ``async with StyleRouter(load_instances()) as router: result = await router.run(wf, style="anime")``
    """

    def __init__(
        self,
        config: InstancesConfig,
        *,
        settings: RouterSettings | None = None,
        client_factory: Callable[..., ComfyClient] = ComfyClient,
    ) -> None:
        self.config = config
        self.settings = settings or RouterSettings()
        self._client_factory = client_factory
        self._members = [
            _Member(instance, client_factory(instance, timeouts=self.settings.timeouts), index)
            for index, instance in enumerate(config.instances)
        ]
        self._listeners: list[SnapshotListener] = []
        self._changed: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._waiting = 0
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> StyleRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every client and its health task (probes begin at once)."""
        if self._started:
            return
        self._started = True
        for member in self._members:
            self._start_member(member)

    def _start_member(self, member: _Member) -> None:
        member.client.start_soon()
        self._unsubscribe.append(member.client.add_listener(self._on_client_event(member)))
        self._tasks.append(
            asyncio.create_task(self._health_loop(member), name=f"health-{member.config.name}")
        )

    async def close(self) -> None:
        """Stop health tasks and close every client (jobs still in flight end with JobLost)."""
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        await asyncio.gather(*(member.client.close() for member in self._members), return_exceptions=True)

    # --- observation -----------------------------------------------------------------------

    def client(self, name: str) -> ComfyClient:
        """The client of one instance (for uploads, object_info, cancel…)."""
        return self._member(name).client

    def _member(self, name: str) -> _Member:
        for member in self._members:
            if member.config.name == name:
                return member
        raise KeyError(name)

    async def cancel(self, prompt_id: str) -> str:
        """Cancel a routed job wherever it runs (see :meth:`ComfyClient.cancel`).

        A job still waiting in the router for a free instance is cancelled by cancelling the task
        awaiting :meth:`run`.
        """
        for member in self._members:
            if prompt_id in member.client.tracker.jobs:
                return await member.client.cancel(prompt_id)
        return "not_found"

    def snapshot(self) -> RouterSnapshot:
        return RouterSnapshot(
            tuple(member.snapshot() for member in self._members), self._waiting, time.time()
        )

    def add_listener(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` after every change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_until(
        self, predicate: Callable[[RouterSnapshot], bool], timeout: float | None = None
    ) -> RouterSnapshot:
        """Wait until ``predicate(snapshot)`` holds (checked after every change)."""

        async def waiter() -> RouterSnapshot:
            while True:
                snap = self.snapshot()
                if predicate(snap):
                    return snap
                await self._next_change()

        async with asyncio.timeout(timeout):
            return await waiter()

    async def watch(self) -> AsyncIterator[RouterSnapshot]:
        """Yield the current snapshot, then a new one after every change (for dashboards)."""
        while True:
            yield self.snapshot()
            await self._next_change()

    async def _next_change(self) -> None:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def _notify(self) -> None:
        snap = self.snapshot()
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:
                log.exception("router snapshot listener failed")
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _on_client_event(self, member: _Member) -> Callable[[ComfyEvent], None]:
        def on_event(event: ComfyEvent) -> None:
            if isinstance(event, StatusEvent):
                self._notify()
            elif isinstance(event, (ConnectionLost, Reconnected)):
                member.probe_now.set()
                self._notify()

        return on_event

    # --- health ----------------------------------------------------------------------------

    async def check_now(self) -> RouterSnapshot:
        """Probe every instance once, now, and return the resulting snapshot."""
        await asyncio.gather(*(self._probe(member) for member in self._members))
        self._notify()
        return self.snapshot()

    async def _probe(self, member: _Member) -> None:
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                stats = await member.client.system_stats()
                queue = await member.client.queue_remaining()
        except (ComfyError, TimeoutError, OSError) as exc:
            member.failures += 1
            member.last_error = str(exc) or type(exc).__name__
            if member.state != "unhealthy":
                log.warning("ComfyUI instance %s is unhealthy: %s", member.config.name, member.last_error)
            member.state = "unhealthy"
        else:
            if member.state == "unhealthy":
                log.info("ComfyUI instance %s recovered", member.config.name)
            member.state = "healthy"
            member.failures = 0
            member.last_error = None
            member.queue_remaining = queue
            member.stats_version = stats.comfyui_version
            member.devices = stats.devices
        member.last_checked = time.time()

    async def _health_loop(self, member: _Member) -> None:
        while True:
            member.probe_now.clear()
            await self._probe(member)
            self._notify()
            delay = self.settings.health_interval
            if member.failures:
                delay = min(self.settings.health_backoff_max, delay * 2 ** min(member.failures - 1, 16))
            try:
                async with asyncio.timeout(delay):
                    await member.probe_now.wait()
            except TimeoutError:
                pass

    # --- dispatch --------------------------------------------------------------------------

    def _candidates(self, style: str, exclude: set[str], only: str | None = None) -> list[_Member]:
        if only is not None:
            healthy = [m for m in self._members if m.config.name == only and m.state == "healthy"]
        else:
            healthy = [m for m in self._members if style in m.config.styles and m.state == "healthy"]
        others = [m for m in healthy if m.config.name not in exclude]
        # Instances a job already failed on are avoided, but not when nothing else is left.
        return others or healthy

    def _pick_member(self, style: str, exclude: set[str], only: str | None = None) -> _Member | None:
        free = [
            m
            for m in self._candidates(style, exclude, only)
            if m.in_flight < self.settings.max_in_flight_per_instance
        ]
        if not free:
            return None
        known = [m.mean_seconds for m in free if m.mean_seconds is not None]
        # Instances without a measurement yet are assumed as fast as the fastest known one, so
        # they get tried; with equal speeds this is exactly "least queue_remaining".
        default = min(known) if known else 1.0

        def expected_finish(member: _Member) -> tuple[float, int, int]:
            speed = member.mean_seconds if member.mean_seconds is not None else default
            return ((member.load + 1) * speed, member.load, member.order)

        return min(free, key=expected_finish)

    def pick(self, style: str | None, *, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The name of the instance a job of ``style`` would go to now (None: all busy or down)."""
        member = self._pick_member(self.config.resolve_style(style), set(exclude))
        return None if member is None else member.config.name

    def serving(
        self, style: str | None = None, *, instance: str | None = None
    ) -> tuple[InstanceSnapshot, ...]:
        """Snapshots of the instances a job of ``style`` (or pinned to ``instance``) may use."""
        if instance is not None:
            return tuple(m.snapshot() for m in self._members if m.config.name == instance)
        resolved = self.config.resolve_style(style)
        return tuple(m.snapshot() for m in self._members if resolved in m.config.styles)

    def instance_name(self, ref: str) -> str:
        """The name of the instance ``ref`` names: a configured name, or a base URL.

        A URL no configured instance has is added as an ad-hoc instance (no styles, so only jobs
        pinned to it go there), started at once when the router runs. KeyError for neither.
        """
        for member in self._members:
            if ref == member.config.name:
                return ref
        url = ref.rstrip("/")
        for member in self._members:
            if member.config.base_url == url:
                return member.config.name
        if "://" not in ref:
            raise KeyError(ref)
        config = InstanceConfig(url, url, styles=())
        member = _Member(
            config, self._client_factory(config, timeouts=self.settings.timeouts), len(self._members)
        )
        self._members.append(member)
        if self._started:
            self._start_member(member)
        return config.name

    async def _acquire(self, style: str, exclude: set[str], only: str | None = None) -> _Member:
        deadline = time.monotonic() + self.settings.no_instance_timeout
        self._waiting += 1
        try:
            while True:
                member = self._pick_member(style, exclude, only)
                if member is not None:
                    member.in_flight += 1
                    return member
                if self._candidates(style, exclude, only):
                    # All busy: wait for a slot (no deadline, the queue is ours to hold).
                    deadline = time.monotonic() + self.settings.no_instance_timeout
                    await self._next_change()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if only is not None:
                        raise NoInstanceAvailable(f"ComfyUI instance {only!r} is not healthy")
                    raise NoInstanceAvailable(f"no healthy ComfyUI instance serves style {style!r}")
                try:
                    async with asyncio.timeout(remaining):
                        await self._next_change()
                except TimeoutError:
                    continue
        finally:
            self._waiting -= 1

    def submit(
        self,
        workflow: Mapping[str, Any] | Prepare,
        *,
        style: str | None = None,
        instance: str | None = None,
        timeout: float | None = None,
        prompt_id: str | None = None,
        ui_workflow: Mapping[str, Any] | None = None,
        on_event: Callable[[ComfyEvent], None] | None = None,
        **submit_kwargs: Any,
    ) -> RoutedJob:
        """Start routing one render now and return its :class:`RoutedJob` at once.

        ``workflow`` is the API prompt, or a :data:`Prepare` coroutine function called with the
        chosen instance's name and client to build it there (upload inputs, validate against its
        ``/object_info``); it is called again for every instance the job is resubmitted to, so
        uploads and validation always happen on the instance that runs the job. ``instance``
        pins the job to that instance (no other is used); otherwise ``style`` routes it.
        ``prompt_id`` is ours when given (else a new UUID), known before any request.
        ``on_event`` is called with every event of the job, as the stream yields them.
        """
        prepare: Prepare
        if callable(workflow):
            prepare = workflow
        else:
            fixed = PreparedPrompt(workflow, ui_workflow)

            async def prepare(name: str, client: ComfyClient) -> PreparedPrompt:
                return fixed

        if instance is not None:
            self._member(instance)  # KeyError now, not inside the task
        routed = RoutedJob(
            (prompt_id or str(uuid.uuid4())).lower(),
            self.config.resolve_style(style),
            instance,
            on_event,
        )
        routed._start(self._drive(routed, prepare, timeout, submit_kwargs))
        return routed

    async def run(
        self,
        workflow: Mapping[str, Any] | Prepare,
        *,
        style: str | None = None,
        timeout: float | None = None,
        on_event: Callable[[ComfyEvent], None] | None = None,
        **submit_kwargs: Any,
    ) -> JobResult:
        """Render ``workflow`` on an instance of ``style``; resubmits if that instance dies first.

        :meth:`submit` and :meth:`RoutedJob.result` in one call; cancelling the awaiting task
        cancels the job (on the server too) through :meth:`RoutedJob.cancel`.
        """
        routed = self.submit(workflow, style=style, timeout=timeout, on_event=on_event, **submit_kwargs)
        try:
            return await routed.result()
        except asyncio.CancelledError:
            await routed.cancel()
            raise

    async def _drive(
        self, routed: RoutedJob, prepare: Prepare, timeout: float | None, submit_kwargs: dict[str, Any]
    ) -> JobResult:
        """The task behind a :class:`RoutedJob`: acquire, prepare, submit, wait; resubmit if lost."""
        tried: set[str] = set()
        attempts = 0
        while True:
            member = await self._acquire(routed.style, tried, routed.pinned)
            self._notify()
            name, client = member.config.name, member.client
            routed.instance = name
            started = time.monotonic()
            job: Job | None = None
            submitted = False

            def hold(created: Job) -> None:
                nonlocal job
                job = created

            try:
                prepared = await prepare(name, client)
                await client.submit(
                    prepared.workflow,
                    ui_workflow=prepared.ui_workflow,
                    prompt_id=routed.prompt_id,
                    on_job=hold,
                    **submit_kwargs,
                )
                submitted = True
                assert job is not None
                routed._attach(job)
                result = await client.wait(job, timeout=timeout)
            except asyncio.CancelledError:
                if job is not None:
                    member.failed += 1
                # The one place a routed job is cancelled on its server. Cancelled during the
                # POST, ComfyClient.submit has already asked the server for our id (its outcome is
                # on the Job); later, it is asked here.
                if job is None:
                    outcome = "not_found"
                elif not submitted or job.done:
                    outcome = job.cancel_outcome or "not_found"
                else:
                    outcome = await client.cancel_job(job)
                routed._cancelled(name, outcome)
                raise
            except (JobLost, ComfyUnavailable) as exc:
                member.failed += 1
                if isinstance(exc, ComfyUnavailable):
                    # Before the POST was accepted (prepare, connect, a POST certainly not
                    # delivered) nothing ran; after it, a failed download must not rerun the job.
                    resubmittable = not submitted and not exc.maybe_delivered
                else:
                    resubmittable = exc.resubmittable
                if (
                    isinstance(exc, ComfyUnavailable)
                    or "unreachable" in exc.reason
                    or "neither" in exc.reason
                ):
                    member.state = "unhealthy"
                    member.last_error = str(exc)
                    member.probe_now.set()
                if resubmittable and attempts < self.settings.resubmit_attempts and self._started:
                    attempts += 1
                    tried.add(name)
                    log.warning(
                        "resubmitting a %s job: %s died before starting it (%s)", routed.style, name, exc
                    )
                    routed._publish(JobResubmitted(routed.prompt_id, name, str(exc)))
                    continue
                raise
            except BaseException:
                if job is not None:  # not a preparation error (bad input, invalid for the instance)
                    member.failed += 1
                raise
            else:
                member.done += 1
                # Render time only (start -> finish): queue waits must not make a GPU look slow.
                member.record_duration(result.timings.running or (time.monotonic() - started))
                return result
            finally:
                member.in_flight -= 1
                self._notify()


@dataclass(frozen=True)
class PreparedPrompt:
    """What to submit on one instance: the API prompt and the UI workflow for ``extra_pnginfo``."""

    workflow: Mapping[str, Any]
    ui_workflow: Mapping[str, Any] | None = None


Prepare = Callable[[str, ComfyClient], Awaitable[PreparedPrompt]]
"""Builds the prompt for one instance: ``await prepare(instance_name, client)``."""


class RoutedJob:
    """One render handed to the :class:`StyleRouter`: a handle that does not block the caller.

    Owns the task that acquires an instance, prepares the prompt there, submits it and waits
    (resubmitting on another instance when the first lost it before starting), and the job's
    event stream across those attempts. ``prompt_id`` is ours and known at once (an old server
    that makes its own id replaces it when it answers); ``instance`` is where the job is now.
    ``async for event in routed`` yields every typed :data:`~app.comfy.events.ComfyEvent` from
    the start (late iterators get a replay) and ends when the job has; :meth:`result` waits for
    the :class:`~app.comfy.results.JobResult` (or raises the job's error); :meth:`cancel` is the
    only way to cancel it, on the server too. Runs on the router's event loop.
    """

    def __init__(
        self,
        prompt_id: str,
        style: str,
        pinned: str | None,
        on_event: Callable[[ComfyEvent], None] | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        self.style = style
        self.pinned = pinned
        self.instance: str | None = None
        self.cancel_outcome: str | None = None
        self._on_event = on_event
        self._task: asyncio.Task[JobResult] | None = None
        self._log: EventReplay[ComfyEvent] = EventReplay(lambda: self.done)

    def _start(self, coro: Coroutine[Any, Any, JobResult]) -> None:
        self._task = asyncio.create_task(coro, name=f"routed-{self.prompt_id}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[JobResult]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: a caller that only cancels is not warned about it
        self._log.wake()

    def _publish(self, event: ComfyEvent) -> None:
        self._log.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a broken progress display must not lose the render
                log.exception("routed job %s: on_event callback failed", self.prompt_id)

    def _attach(self, job: Job) -> None:
        self.prompt_id = job.prompt_id  # the server's id, if it made its own
        job.subscribe(self._publish)

    def _cancelled(self, instance: str, outcome: str) -> None:
        error = outcome.removeprefix("failed: ") if outcome.startswith("failed: ") else None
        self.cancel_outcome = "failed" if error is not None else outcome
        self._publish(JobCancelled(self.prompt_id, instance, self.cancel_outcome, error))

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def events(self) -> AsyncIterator[ComfyEvent]:
        """Every event of the job so far, then each new one; ends when the job has ended."""
        async for event in self._log.follow():
            yield event

    def __aiter__(self) -> AsyncIterator[ComfyEvent]:
        return self.events()

    async def result(self) -> JobResult:
        """The finished job's result; raises its error (``CancelledError`` once cancelled).

        Cancelling a task that awaits this does not cancel the job: call :meth:`cancel`.
        """
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def cancel(self) -> str:
        """Cancel the job wherever it is (waiting for an instance, preparing, queued, running).

        Returns what the server did: ``"dequeued"``, ``"interrupted"``, ``"not_found"`` (it had
        ended or never reached a server) or ``"failed"`` (the instance could not be asked; the
        :class:`~app.comfy.events.JobCancelled` event says why). A second call answers the same.
        """
        assert self._task is not None
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        return self.cancel_outcome or "not_found"


URL_STYLE = "url"
"""The one style of the ad-hoc instance a command makes from ``--url``."""


def command_line_router(
    url: str | None, style: str | None, *, connect_timeout: float
) -> tuple[StyleRouter, str | None]:
    """The router of one command (``luna render``, ``luna story``) and the style to ask it for.

    Over ``url`` alone (one ad-hoc instance serving :data:`URL_STYLE`), else over the
    configured ``instances.toml``; timeouts short enough that a command fails fast when no
    ComfyUI answers. Raises :class:`~app.comfy.instances.InstanceConfigError` for a bad URL or
    a bad ``instances.toml``. Not started: use it as ``async with``.
    """
    timeouts = ComfyTimeouts(connect=connect_timeout, ws_open=max(connect_timeout, 2.0))
    if url:
        config = InstancesConfig((InstanceConfig(url, url, styles=(URL_STYLE,)),), default_style=URL_STYLE)
        style = URL_STYLE
    else:
        config = load_instances()
    settings = RouterSettings(
        timeouts=timeouts, probe_timeout=connect_timeout + 1.0, no_instance_timeout=connect_timeout
    )
    return StyleRouter(config, settings=settings), style
