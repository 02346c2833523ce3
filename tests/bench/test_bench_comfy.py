"""Benchmarks of the ComfyUI layer (run: ``pytest tests/bench/test_bench_comfy.py -m bench -s``).

1. Client overhead per job: submit → outputs in hand against a fake ComfyUI with zero render
   time, median over many jobs; the fake runs in its own process (so its CPU does not queue
   behind the client's) and, for reference, in-process. Raw GET round trips of httpx (what the
   client uses) and aiohttp are printed side by side to show what the HTTP library costs.
2. Routing: 200 jobs over 4 fake instances (own processes) with uneven speeds; makespan of the
   StyleRouter (first-free dispatch, depth 1 and 2, and with no depth limit = plain least
   queue) against the ideal least-loaded schedule computed offline from the known speeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.router import RouterSettings, StyleRouter
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.bench


@contextlib.asynccontextmanager
async def fake_process(render_delay: float = 0.0):
    """A FakeComfyUI in a child process; yields its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.fake_comfyui",
        "--render-delay",
        str(render_delay),
        cwd=str(ROOT),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line and line[0] == "FAKE_COMFYUI_READY", line
        yield line[1]
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def median_job_ms(url: str, jobs: int) -> tuple[float, float, float]:
    """(median wall ms per job, median wall ms per fully cached job, client CPU ms per job)."""
    async with ComfyClient(url) as client:
        for seed in range(5):  # warm-up: connections, caches
            await client.run(txt2img_prompt(seed=100_000 + seed))
        samples = []
        cpu_start = time.process_time()
        for seed in range(jobs):
            start = time.perf_counter()
            result = await client.run(txt2img_prompt(seed=seed))
            samples.append((time.perf_counter() - start) * 1000)
            assert result.images
        cpu_ms = (time.process_time() - cpu_start) / jobs * 1000
        cached = []
        for _ in range(20):
            start = time.perf_counter()
            await client.run(txt2img_prompt(seed=0))
            cached.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), statistics.median(cached), cpu_ms


async def raw_get_ms(url: str, count: int = 200) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(10):
            await client.get("/api/prompt")
        start = time.perf_counter()
        for _ in range(count):
            await client.get("/api/prompt")
        httpx_ms = (time.perf_counter() - start) / count * 1000
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(url + "/api/prompt") as response:
                await response.read()
        start = time.perf_counter()
        for _ in range(count):
            async with session.get(url + "/api/prompt") as response:
                await response.read()
        aiohttp_ms = (time.perf_counter() - start) / count * 1000
    return httpx_ms, aiohttp_ms


async def test_bench_client_overhead_per_job():
    jobs = 200
    async with fake_process() as url:
        out_median, out_cached, out_cpu = await median_job_ms(url, jobs)
        out_httpx, out_aiohttp = await raw_get_ms(url)
    async with FakeComfyUI() as fake:
        in_median, in_cached, _ = await median_job_ms(fake.url, jobs)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"client overhead, submit -> outputs in hand, median of {jobs} uncached jobs (zero render time):")
    print(
        f"  fake in its own process : {out_median:6.2f} ms   (fully cached prompt: {out_cached:.2f} ms)   goal < 5 ms"
    )
    print(f"  fake in the same process: {in_median:6.2f} ms   (fully cached prompt: {in_cached:.2f} ms)")
    print(f"  client CPU per job (fake in its own process): {out_cpu:.2f} ms")
    print(
        f"  raw GET round trip to the fake process: httpx {out_httpx:.2f} ms vs aiohttp {out_aiohttp:.2f} ms "
        f"(ratio {out_httpx / out_aiohttp:.1f}x); with the WebSocket up an uncached job needs 2 requests "
        "(POST /prompt, /view), a fully cached one 3 (+ GET /history)"
    )


def ideal_makespan(delays: list[float], jobs: int) -> float:
    """Greedy least-loaded list schedule with known per-job times (each job to the earliest finisher)."""
    finish = [0.0] * len(delays)
    for _ in range(jobs):
        index = min(range(len(delays)), key=lambda i: finish[i] + delays[i])
        finish[index] += delays[index]
    return max(finish)


async def routed_makespan(
    urls: list[str], depth: int, jobs: int
) -> tuple[float, dict[str, int], list[float]]:
    config = InstancesConfig(tuple(InstanceConfig(f"gpu{i}", url, ("anime",)) for i, url in enumerate(urls)))
    settings = RouterSettings(
        health_interval=1.0, max_in_flight_per_instance=depth, timeouts=ComfyTimeouts(history=30.0)
    )
    async with StyleRouter(config, settings=settings) as router:
        await router.wait_until(lambda s: all(i.healthy and i.connected for i in s.instances), timeout=30)
        start = time.perf_counter()
        results = await asyncio.gather(
            *(router.run(txt2img_prompt(seed=1_000 * depth + n), style="anime") for n in range(jobs))
        )
        makespan = time.perf_counter() - start
        snap = router.snapshot()
        # Per-job time each fake really took (start -> finish as the client saw it).
        measured = [snap.by_name(f"gpu{i}").mean_job_seconds or 0.0 for i in range(len(urls))]
    counts: dict[str, int] = {}
    for result in results:
        counts[result.instance] = counts.get(result.instance, 0) + 1
    return makespan, counts, measured


async def test_bench_router_makespan_uneven_instances():
    jobs = 200
    delays = [0.04, 0.08, 0.12, 0.24]
    ideal = ideal_makespan(delays, jobs)
    even_split = (jobs / len(delays)) * max(delays)
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(fake_process(d)) for d in delays]
        rows = []
        for depth, label in (
            (1, "first-free, depth 1"),
            (2, "first-free, depth 2 (default)"),
            (4, "first-free, depth 4"),
            (10_000, "no depth limit"),
        ):
            makespan, counts, measured = await routed_makespan(urls, depth, jobs)
            rows.append((label, makespan, counts, measured))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{jobs} jobs over 4 instances with per-job render times {delays} s:")
    print(
        f"  ideal least-loaded schedule: {ideal:.2f} s;  naive even split would take {even_split:.2f} s "
        f"({even_split / ideal:.2f}x)"
    )
    for label, makespan, counts, measured in rows:
        share = ", ".join(f"{name}={counts.get(name, 0)}" for name in ("gpu0", "gpu1", "gpu2", "gpu3"))
        fair = ideal_makespan(measured, jobs) if all(measured) else float("nan")
        print(
            f"  {label:31s}: {makespan:.2f} s = {makespan / ideal:.2f}x ideal "
            f"({makespan / fair:.2f}x the ideal for the measured per-job times "
            f"{[round(m * 1000) for m in measured]} ms)   jobs: {share}"
        )
