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
* **resubmit** — a job whose instance died before the job started (``JobLost`` with
  ``started=False``, or the submit itself failing to connect) is sent, unchanged (same seed, so
  the same image), to another healthy instance of the style, up to ``resubmit_attempts`` times.
* **observability** — :meth:`StyleRouter.snapshot` (per-instance health, queue, VRAM, versions,
  jobs in flight, timings), :meth:`add_listener` (called on every change), :meth:`watch` (async
  iterator of snapshots) and :meth:`wait_until` for the GUI dashboard, the CLI and tests.

Runs on one asyncio event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.errors import ComfyError, ComfyUnavailable, JobLost, NoInstanceAvailable
from app.comfy.events import ConnectionLost, Reconnected, StatusEvent
from app.comfy.instances import InstanceConfig, InstancesConfig
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
            await member.client.start()
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

    def _on_client_event(self, member: _Member) -> Callable[[Any], None]:
        def on_event(event: Any) -> None:
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

    def _candidates(self, style: str, exclude: set[str]) -> list[_Member]:
        healthy = [m for m in self._members if style in m.config.styles and m.state == "healthy"]
        others = [m for m in healthy if m.config.name not in exclude]
        # Instances a job already failed on are avoided, but not when nothing else is left.
        return others or healthy

    def pick(self, style: str | None, *, exclude: set[str] | frozenset[str] = frozenset()) -> _Member | None:
        """The instance a job of ``style`` would go to now (None when all are busy or down)."""
        resolved = self.config.resolve_style(style)
        free = [
            m
            for m in self._candidates(resolved, set(exclude))
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

    async def _acquire(self, style: str, exclude: set[str]) -> _Member:
        deadline = time.monotonic() + self.settings.no_instance_timeout
        self._waiting += 1
        try:
            while True:
                member = self.pick(style, exclude=exclude)
                if member is not None:
                    member.in_flight += 1
                    return member
                if self._candidates(self.config.resolve_style(style), exclude):
                    # All busy: wait for a slot (no deadline, the queue is ours to hold).
                    deadline = time.monotonic() + self.settings.no_instance_timeout
                    await self._next_change()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoInstanceAvailable(f"no healthy ComfyUI instance serves style {style!r}")
                try:
                    async with asyncio.timeout(remaining):
                        await self._next_change()
                except TimeoutError:
                    continue
        finally:
            self._waiting -= 1

    async def run(
        self,
        workflow: Mapping[str, Any],
        *,
        style: str | None = None,
        timeout: float | None = None,
        on_event: Callable[[Any], None] | None = None,
        **submit_kwargs: Any,
    ) -> JobResult:
        """Render ``workflow`` on an instance of ``style``; resubmits if that instance dies first."""
        resolved = self.config.resolve_style(style)
        tried: set[str] = set()
        attempts = 0
        while True:
            member = await self._acquire(resolved, tried)
            self._notify()
            started = time.monotonic()
            try:
                result = await member.client.run(
                    workflow, on_event=on_event, timeout=timeout, **submit_kwargs
                )
            except (JobLost, ComfyUnavailable) as exc:
                member.failed += 1
                never_started = isinstance(exc, ComfyUnavailable) or not exc.started
                if (
                    isinstance(exc, ComfyUnavailable)
                    or "unreachable" in getattr(exc, "reason", "")
                    or "neither" in getattr(exc, "reason", "")
                ):
                    member.state = "unhealthy"
                    member.last_error = str(exc)
                    member.probe_now.set()
                if never_started and attempts < self.settings.resubmit_attempts and self._started:
                    attempts += 1
                    tried.add(member.config.name)
                    log.warning(
                        "resubmitting a %s job: %s died before starting it (%s)",
                        resolved,
                        member.config.name,
                        exc,
                    )
                    continue
                raise
            except BaseException:
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
