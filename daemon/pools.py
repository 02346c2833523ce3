"""Worker pools with static or dynamic scaling, generic over the job callable.

Owns: one asyncio queue of jobs per pool, the workers that drain it (each an execution slot with
its own OS thread and, on GPU, its own CUDA stream via :class:`daemon.devices.WorkerRunner`),
the scaling rule, per-pool counters/latencies and the ``scaling`` events.

Threading: every method is called on the daemon's event loop thread; only the job callables
run on worker threads. Workers share ONE read-only copy of the model weights (the job closes
over it), so scaling adds concurrency, never copies.

Scaling (dynamic mode), evaluated every ``check_interval`` by a task on the loop:

* scale up by one worker when the number of WAITING jobs stays above
  ``scale_up_queue_threshold`` for ``scale_up_delay`` seconds, the pool is below its maximum,
  and the device's real free memory (whole device, other processes included) covers the
  measured per-worker footprint plus the safety margin; the delay restarts after each add;
* scale down by one worker when the queue is empty and a worker has been idle (no job in
  flight, measured from when its LAST JOB FINISHED) for ``idle_timeout``: the highest-numbered
  idle worker leaves; never a worker with a job in flight (the old daemon's bug), never below
  the minimum.

Static mode runs exactly one worker and never scales. The clock is injectable so unit tests
drive :meth:`WorkerPool.evaluate_scaling` with a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from daemon.config import DaemonConfig, PoolLimits
from daemon.wire.status import Percentiles, PoolStatus, ScalingEvent

T = TypeVar("T")
GIB = 1024**3


class PoolClosed(Exception):
    """The pool is shutting down; the job was not (or not fully) run."""


class PoolFull(Exception):
    """The pool's queue is at its bound; the caller should retry later (BUSY)."""


class JobRunner(Protocol):
    """Runs one job on a worker's own thread (on GPU: inside that worker's CUDA stream)."""

    def run(self, job: Callable[[], T]) -> T: ...


class _DirectRunner:
    """Runs the job as is (CPU, or tests); GPU pools get a stream-owning runner instead."""

    def run(self, job: Callable[[], T]) -> T:
        return job()


@dataclass(frozen=True)
class PoolSettings:
    """Everything one pool needs to know about scaling."""

    name: str
    limits: PoolLimits
    dynamic: bool = True
    idle_timeout: float = 60.0
    scale_up_queue_threshold: int = 1
    scale_up_delay: float = 0.5
    safety_margin_bytes: int = GIB
    check_interval: float = 0.1
    max_queue: int = 256

    @classmethod
    def from_config(cls, name: str, config: DaemonConfig) -> PoolSettings:
        scaling = config.scaling
        limits = scaling.vae if name == "vae" else scaling.clip
        if not scaling.dynamic:
            limits = PoolLimits(1, 1)
        return cls(
            name=name,
            limits=limits,
            dynamic=scaling.dynamic,
            idle_timeout=scaling.idle_timeout,
            scale_up_queue_threshold=scaling.scale_up_queue_threshold,
            scale_up_delay=scaling.scale_up_delay,
            safety_margin_bytes=int(scaling.safety_margin_gb * GIB),
            check_interval=scaling.check_interval,
            max_queue=config.max_queue,
        )


@dataclass
class _Job:
    call: Callable[[], Any]
    future: asyncio.Future
    enqueued_at: float


@dataclass
class _Worker:
    id: int
    executor: ThreadPoolExecutor
    runner: JobRunner
    last_active: float
    busy: bool = False
    jobs_done: int = 0
    task: asyncio.Task | None = field(default=None, repr=False)


class WorkerPool:
    """A queue plus 1..N workers; see the module docstring for the scaling rule."""

    def __init__(
        self,
        settings: PoolSettings,
        *,
        free_memory: Callable[[], int],
        runner_factory: Callable[[], JobRunner] = _DirectRunner,
        on_scaling: Callable[[ScalingEvent], None] | None = None,
        footprint_meter: Callable[[], contextlib.AbstractContextManager[list[int]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_scaler: bool = True,
        logger: logging.Logger | None = None,
    ):
        self.settings = settings
        self.name = settings.name
        self._free_memory = free_memory
        self._runner_factory = runner_factory
        self._on_scaling = on_scaling
        self._footprint_meter = footprint_meter
        self._clock = clock
        self._run_scaler = run_scaler
        self._log = logger or logging.getLogger(f"luna.daemon.pool.{settings.name}")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._workers: dict[int, _Worker] = {}
        self._scaler_task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._started = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._pressure_since: float | None = None
        self._blocked_reason = ""
        # Per-worker footprint: the model layer's prior until a job measured its real peak.
        self._footprint_prior = 0
        self._footprint_measured = 0
        self.total_requests = 0
        self.completed = 0
        self.failed = 0
        self._latencies: deque[float] = deque(maxlen=2048)
        self._run_times: deque[float] = deque(maxlen=2048)
        self.scaling_events: list[ScalingEvent] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the minimum number of workers (1 in static mode) and the scaler."""
        if self._started:
            return
        self._started = True
        for _ in range(self.settings.limits.min_workers if self.settings.dynamic else 1):
            self._add_worker()
        if self.settings.dynamic and self._run_scaler:
            self._scaler_task = asyncio.create_task(self._scaler_loop(), name=f"scaler-{self.name}")

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; fail queued jobs; let in-flight jobs finish for ``grace`` seconds."""
        if self._closed:
            return
        self._closed = True
        if self._scaler_task is not None:
            self._scaler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scaler_task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(PoolClosed("the daemon is shutting down"))
        if not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
            except TimeoutError:
                self._log.warning(
                    "%s pool: %d job(s) still running after %.1fs; cancelling",
                    self.name,
                    self.busy_workers,
                    grace,
                )
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            await self._stop_worker(worker)
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ submitting

    async def submit(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a worker thread; raises PoolClosed / PoolFull or what ``call`` raised."""
        if self._closed:
            raise PoolClosed("the daemon is shutting down")
        if not self._started:
            await self.start()
        if self._queue.qsize() >= self.settings.max_queue:
            raise PoolFull(f"{self.name} queue is full ({self.settings.max_queue} waiting)")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(call, future, self._clock()))
        self.total_requests += 1
        if not self._workers:
            # min_workers = 0: the first job starts a worker at once (memory permitting).
            self.evaluate_scaling()
        return await future

    # ------------------------------------------------------------------ scaling

    def evaluate_scaling(self) -> ScalingEvent | None:
        """One step of the scaling rule; returns the event it emitted, if any."""
        if not self.settings.dynamic or self._closed:
            return None
        now = self._clock()
        depth = self._queue.qsize()
        count = len(self._workers)
        limits = self.settings.limits

        if count == 0 and depth > 0:
            return self._try_scale_up(now) if count < limits.max_workers else None
        if depth > self.settings.scale_up_queue_threshold:
            if self._pressure_since is None:
                self._pressure_since = now
            if now - self._pressure_since >= self.settings.scale_up_delay and count < limits.max_workers:
                return self._try_scale_up(now)
            return None
        self._pressure_since = None

        if depth == 0 and count > limits.min_workers:
            # Workers are interchangeable slots over shared weights: once any of them has been
            # idle for the timeout there is spare capacity, and the highest-numbered idle one
            # leaves (so ids stay compact, as the original daemon's status shows). A busy worker never leaves.
            idle = [w for w in self._workers.values() if not w.busy]
            if any(now - w.last_active >= self.settings.idle_timeout for w in idle):
                victim = max(idle, key=lambda w: w.id)
                del self._workers[victim.id]
                self._spawn_stop(victim)
                return self._emit("scale_down", victim.id)
        return None

    def _try_scale_up(self, now: float) -> ScalingEvent | None:
        need = self.worker_footprint_bytes + self.settings.safety_margin_bytes
        free = self._free_memory()
        if free < need:
            reason = (
                f"free memory {free / GIB:.2f} GiB < per-worker footprint "
                f"{self.worker_footprint_bytes / GIB:.2f} GiB + safety margin "
                f"{self.settings.safety_margin_bytes / GIB:.2f} GiB"
            )
            if reason != self._blocked_reason:
                self._log.warning("%s pool: not scaling up: %s", self.name, reason)
                self._blocked_reason = reason
            return None
        self._blocked_reason = ""
        self._pressure_since = now
        worker = self._add_worker()
        return self._emit("scale_up", worker.id, free)

    def _emit(self, kind: str, worker_id: int, free: int | None = None) -> ScalingEvent:
        free = self._free_memory() if free is None else free
        event = ScalingEvent(
            event=kind,
            pool=self.name,
            worker_id=worker_id,
            active_workers=len(self._workers),
            vram_available_gb=round(free / GIB, 3),
        )
        self.scaling_events.append(event)
        del self.scaling_events[:-100]
        self._log.info(
            "%s pool %s: worker %d, %d active, %.2f GiB free",
            self.name,
            kind,
            worker_id,
            event.active_workers,
            event.vram_available_gb,
        )
        if self._on_scaling is not None:
            try:
                self._on_scaling(event)
            except Exception:  # a broken listener must never break scaling
                self._log.exception("scaling listener failed")
        return event

    async def _scaler_loop(self) -> None:
        while True:
            self.evaluate_scaling()
            await asyncio.sleep(self.settings.check_interval)

    # ------------------------------------------------------------------ workers

    def _add_worker(self) -> _Worker:
        worker_id = next(i for i in range(len(self._workers) + 1) if i not in self._workers)
        worker = _Worker(
            id=worker_id,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"luna-{self.name}-{worker_id}"),
            runner=self._runner_factory(),
            last_active=self._clock(),
        )
        worker.task = asyncio.create_task(self._worker_loop(worker), name=f"{self.name}-worker-{worker_id}")
        self._workers[worker_id] = worker
        return worker

    def _spawn_stop(self, worker: _Worker) -> None:
        # Only idle workers are stopped here: their task waits in queue.get(), where
        # cancellation leaves any just-arrived job in the queue for another worker.
        if worker.task is not None:
            worker.task.cancel()
            self._retiring.add(worker.task)
            worker.task.add_done_callback(self._retiring.discard)
        worker.executor.shutdown(wait=False)

    async def _stop_worker(self, worker: _Worker) -> None:
        if worker.task is not None:
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task
        worker.executor.shutdown(wait=False, cancel_futures=True)

    async def _worker_loop(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            # No await between get() and here: the scaler sees this worker busy or waiting.
            worker.busy = True
            self._idle.clear()
            try:
                if job.future.done():  # the caller went away while the job waited
                    continue
                started = self._clock()
                solo = self.busy_workers == 1
                call = self._measured(job.call) if solo and self._footprint_meter else job.call
                try:
                    result = await loop.run_in_executor(worker.executor, worker.runner.run, call)
                except asyncio.CancelledError:
                    if not job.future.done():
                        job.future.set_exception(PoolClosed("cancelled: the daemon is shutting down"))
                    raise
                except Exception as exc:
                    self.failed += 1
                    if not job.future.done():
                        job.future.set_exception(exc)
                else:
                    self.completed += 1
                    finished = self._clock()
                    self._run_times.append(finished - started)
                    self._latencies.append(finished - job.enqueued_at)
                    if not job.future.done():
                        job.future.set_result(result)
            finally:
                worker.busy = False
                worker.jobs_done += 1
                worker.last_active = self._clock()
                if self.busy_workers == 0:
                    self._idle.set()

    def _measured(self, call: Callable[[], T]) -> Callable[[], T]:
        meter = self._footprint_meter
        assert meter is not None

        def measured() -> T:
            with meter() as box:
                result = call()
            if box and box[0] > 0:
                self._footprint_measured = max(self._footprint_measured, box[0])
            return result

        return measured

    # ------------------------------------------------------------------ figures

    def set_footprint_prior(self, nbytes: int) -> None:
        """The model layer's estimate, used until a solo job measures the real peak."""
        self._footprint_prior = max(self._footprint_prior, int(nbytes))

    @property
    def worker_footprint_bytes(self) -> int:
        return self._footprint_measured or self._footprint_prior

    @property
    def busy_workers(self) -> int:
        return sum(1 for w in self._workers.values() if w.busy)

    @property
    def active_workers(self) -> int:
        return len(self._workers)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def snapshot(self) -> PoolStatus:
        """This pool in the status message: the core fields, then extras."""
        return PoolStatus(
            type=self.name,
            active_workers=len(self._workers),
            queue_depth=self._queue.qsize(),
            total_requests=self.total_requests,
            worker_ids=tuple(sorted(self._workers)),
            mode="dynamic" if self.settings.dynamic else "static",
            min_workers=self.settings.limits.min_workers,
            max_workers=self.settings.limits.max_workers,
            busy_workers=self.busy_workers,
            completed=self.completed,
            failed=self.failed,
            worker_footprint_gb=round(self.worker_footprint_bytes / GIB, 4),
            footprint_measured=bool(self._footprint_measured),
            scale_up_blocked=self._blocked_reason or None,
            latency_ms=_percentiles(self._latencies),
            run_ms=_percentiles(self._run_times),
        )


def _percentiles(samples: deque[float]) -> Percentiles:
    if not samples:
        return Percentiles()
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0, 3)

    return Percentiles(count=len(ordered), p50=pick(0.5), p95=pick(0.95))
