"""WorkerPool: jobs run on worker threads; the scaling rule, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from daemon.config import PoolLimits, build_config
from daemon.pools import GIB, PoolClosed, PoolFull, PoolSettings, WorkerPool
from daemon.wire.status import ScalingEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Gate:
    """A job that blocks its worker thread until released; tells the loop when it started."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = asyncio.Event()
        self.release = threading.Event()
        self.thread_name = ""

    def __call__(self) -> str:
        self.thread_name = threading.current_thread().name
        self.loop.call_soon_threadsafe(self.started.set)
        if not self.release.wait(timeout=10):
            raise RuntimeError("gate never released")
        return "done"


def settings(**kw) -> PoolSettings:
    base = dict(
        name="vae",
        limits=PoolLimits(1, 3),
        dynamic=True,
        idle_timeout=60.0,
        scale_up_queue_threshold=1,
        scale_up_delay=0.5,
        safety_margin_bytes=GIB,
        check_interval=0.01,
        max_queue=8,
    )
    base.update(kw)
    return PoolSettings(**base)


def make_pool(clock: FakeClock, *, free: int = 64 * GIB, events: list | None = None, **kw) -> WorkerPool:
    return WorkerPool(
        settings(**kw),
        free_memory=lambda: free,
        clock=clock,
        run_scaler=False,
        on_scaling=(events.append if events is not None else None),
    )


async def queue_jobs(pool: WorkerPool, n: int) -> tuple[list[Gate], list[asyncio.Task]]:
    gates = [Gate() for _ in range(n)]
    tasks = [asyncio.create_task(pool.submit(g)) for g in gates]
    for _ in range(5):
        await asyncio.sleep(0)
    return gates, tasks


async def test_job_runs_on_a_worker_thread_and_returns_its_result():
    pool = make_pool(FakeClock())
    await pool.start()
    name = await pool.submit(lambda: threading.current_thread().name)
    assert name.startswith("luna-vae-0")
    snap = pool.snapshot()
    assert snap.total_requests == 1 and snap.completed == 1 and snap.worker_ids == (0,)
    await pool.close()


async def test_job_exception_reaches_the_caller_and_pool_keeps_working():
    pool = make_pool(FakeClock())
    await pool.start()

    def boom():
        raise ValueError("bad latent")

    with pytest.raises(ValueError, match="bad latent"):
        await pool.submit(boom)
    assert await pool.submit(lambda: 42) == 42
    assert pool.snapshot().failed == 1
    await pool.close()


async def test_scale_up_needs_queue_pressure_for_the_whole_delay():
    clock, events = FakeClock(), []
    pool = make_pool(clock, events=events)
    await pool.start()
    gates, tasks = await queue_jobs(pool, 4)
    await gates[0].started.wait()
    assert pool.queue_depth == 3

    assert pool.evaluate_scaling() is None  # pressure seen: timer starts
    clock.advance(0.4)
    assert pool.evaluate_scaling() is None  # not long enough yet
    clock.advance(0.1)
    event = pool.evaluate_scaling()
    assert event == ScalingEvent("scale_up", "vae", 1, 2, 64.0)
    assert events == [event]
    assert pool.evaluate_scaling() is None  # the delay restarts after each add
    clock.advance(0.5)
    assert pool.evaluate_scaling().worker_id == 2
    clock.advance(0.5)
    assert pool.evaluate_scaling() is None  # at max (3)
    for g in gates:
        g.release.set()
    assert await asyncio.gather(*tasks) == ["done"] * 4
    await pool.close()


async def test_pressure_that_drops_resets_the_delay():
    clock = FakeClock()
    pool = make_pool(clock)
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    await gates[0].started.wait()
    pool.evaluate_scaling()
    clock.advance(0.3)
    gates[0].release.set()
    await gates[1].started.wait()  # queue depth is now 1: at the threshold, no pressure
    assert pool.queue_depth == 1
    assert pool.evaluate_scaling() is None
    clock.advance(0.3)
    assert pool.evaluate_scaling() is None and pool.active_workers == 1
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)
    await pool.close()


@pytest.mark.expect_log_warnings
async def test_scale_up_refused_when_free_device_memory_is_below_footprint_plus_margin():
    clock, events = FakeClock(), []
    pool = make_pool(clock, free=int(1.5 * GIB), events=events, scale_up_delay=0.0)
    pool.set_footprint_prior(GIB)  # 1 GiB per worker + 1 GiB margin > 1.5 GiB free
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    await gates[0].started.wait()
    assert pool.evaluate_scaling() is None
    assert events == []
    assert "free memory 1.50 GiB" in pool.snapshot().scale_up_blocked
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)
    await pool.close()


async def test_idle_worker_is_removed_after_timeout_but_never_below_min():
    clock, events = FakeClock(), []
    pool = make_pool(clock, events=events, scale_up_delay=0.0, idle_timeout=5.0)
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    await gates[0].started.wait()
    assert pool.evaluate_scaling().event == "scale_up"
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)

    clock.advance(4.9)
    assert pool.evaluate_scaling() is None
    clock.advance(0.2)
    down = pool.evaluate_scaling()
    assert down == ScalingEvent("scale_down", "vae", 1, 1, 64.0)
    clock.advance(100)
    assert pool.evaluate_scaling() is None  # min_workers = 1
    assert pool.snapshot().worker_ids == (0,)
    assert await pool.submit(lambda: "still works") == "still works"
    await pool.close()


async def test_worker_with_a_long_request_in_flight_is_never_scaled_down():
    clock, events = FakeClock(), []
    pool = make_pool(clock, events=events, scale_up_delay=0.0, idle_timeout=5.0)
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    await gates[0].started.wait()
    pool.evaluate_scaling()  # worker 1 joins and takes a job
    await gates[1].started.wait()
    gates[2].release.set()
    gates[0].release.set()
    await tasks[0]
    await tasks[2]
    # Worker 1 has run gates[1] far longer than the idle timeout; worker 0 is idle.
    clock.advance(1000)
    down = pool.evaluate_scaling()
    busy_id = next(w.id for w in pool._workers.values() if w.busy)
    assert down is not None and down.worker_id != busy_id
    assert pool.evaluate_scaling() is None  # the busy one stays
    assert pool.active_workers == 1
    gates[1].release.set()
    assert await tasks[1] == "done"
    await pool.close()


async def test_static_pool_has_one_worker_and_never_scales():
    clock, events = FakeClock(), []
    config = build_config({"scaling.mode": "static"})
    pool = WorkerPool(
        PoolSettings.from_config("clip", config),
        free_memory=lambda: 64 * GIB,
        clock=clock,
        run_scaler=False,
        on_scaling=events.append,
    )
    await pool.start()
    gates, tasks = await queue_jobs(pool, 4)
    await gates[0].started.wait()
    clock.advance(100)
    assert pool.evaluate_scaling() is None
    snap = pool.snapshot()
    assert (snap.type, snap.mode, snap.active_workers, snap.queue_depth) == (
        "clip",
        "static",
        1,
        3,
    )
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)
    assert events == []
    await pool.close()


async def test_min_zero_pool_starts_a_worker_for_the_first_job():
    clock, events = FakeClock(), []
    pool = make_pool(clock, events=events, limits=PoolLimits(0, 2))
    await pool.start()
    assert pool.active_workers == 0
    assert await pool.submit(lambda: 7) == 7
    assert [e.event for e in events] == ["scale_up"]
    await pool.close()


async def test_full_queue_answers_busy_and_closed_pool_refuses():
    clock = FakeClock()
    pool = make_pool(clock, max_queue=2)
    await pool.start()
    gates, tasks = await queue_jobs(pool, 1)
    await gates[0].started.wait()
    more_gates, more_tasks = await queue_jobs(pool, 2)
    gates += more_gates
    tasks += more_tasks
    assert pool.queue_depth == 2
    with pytest.raises(PoolFull):
        await pool.submit(lambda: None)
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)
    await pool.close()
    with pytest.raises(PoolClosed):
        await pool.submit(lambda: None)


async def test_close_fails_queued_jobs_and_lets_the_running_one_finish():
    pool = make_pool(FakeClock())
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    await gates[0].started.wait()
    closing = asyncio.create_task(pool.close(grace=10))
    for _ in range(3):
        await asyncio.sleep(0)
    gates[0].release.set()
    await closing
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "done"
    assert all(isinstance(r, PoolClosed) for r in results[1:])


async def test_cancelled_caller_job_is_skipped_by_the_worker():
    pool = make_pool(FakeClock())
    await pool.start()
    gates, tasks = await queue_jobs(pool, 2)
    await gates[0].started.wait()
    tasks[1].cancel()
    gates[0].release.set()
    assert await tasks[0] == "done"
    assert await pool.submit(lambda: "next") == "next"
    assert gates[1].thread_name == ""  # never ran
    await pool.close()


async def test_real_scaler_loop_scales_up_and_down_with_tiny_timeouts():
    got = asyncio.Queue()
    pool = WorkerPool(
        settings(scale_up_delay=0.0, idle_timeout=0.05, check_interval=0.005),
        free_memory=lambda: 64 * GIB,
        on_scaling=got.put_nowait,
    )
    await pool.start()
    gates, tasks = await queue_jobs(pool, 3)
    up = await asyncio.wait_for(got.get(), 5)
    assert (up.event, up.active_workers) == ("scale_up", 2)
    for g in gates:
        g.release.set()
    await asyncio.gather(*tasks)
    while True:
        event = await asyncio.wait_for(got.get(), 5)
        if event.event == "scale_down" and event.active_workers == 1:
            break
    assert pool.snapshot().worker_ids == (0,)
    await pool.close()
