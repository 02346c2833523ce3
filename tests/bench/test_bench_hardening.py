"""Daemon under bad input and load (run:
``.venv/bin/python -m pytest tests/bench/test_bench_hardening.py -m bench -s``).

Every figure is printed next to a baseline measured in the same run; no timed assertions.

* TCP ping latency: idle baseline, then while one WebSocket client floods ``get_status``;
* TCP ping latency while another client encodes the longest word allowed (100,000 letters);
* the bounded BPE vs the reference quadratic merge loop on 2,000- and 16,000-letter words;
* TCP ping latency while slow clients are held: 60 connections trickling a frame a byte at a
  time and 20 status WebSocket clients that never read;
* time from SIGTERM to process exit with a decode running that blocks far longer than the grace.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import string
import sys
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from daemon.wire.client import AsyncDaemonClient
from daemon.wire.protocol import Request, encode_request, frame_bytes
from tests.helpers.daemon_fixtures import (
    REPO_ROOT,
    daemon_process,
    tiny_clip_files,
    tiny_vae_file,
    ws_recorder,
)
from tests.helpers.reference_bpe import quadratic_reference_bpe

pytestmark = pytest.mark.bench

BASE_ARGS = ("--port", "0", "--ws-port", "0", "--device", "cpu", "--precision", "fp32")


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def _line(label: str, samples: list[float], baseline: list[float] | None = None) -> str:
    p50, p99, worst = _ms(samples, 0.5), _ms(samples, 0.99), max(samples) * 1000.0
    text = f"{label:<44} n={len(samples):5d}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  max {worst:8.3f} ms"
    if baseline is not None:
        text += f"  (p50 ×{p50 / _ms(baseline, 0.5):.2f}, p99 ×{p99 / _ms(baseline, 0.99):.2f})"
    return text


async def _pings(client: AsyncDaemonClient, *, count: int | None = None, until=None) -> list[float]:
    samples = []
    while (count is not None and len(samples) < count) or (until is not None and not until()):
        started = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - started)
    return samples


@pytest.mark.timeout(600)
async def test_bench_ping_latency_under_get_status_flood_and_a_longest_word(tmp_path):
    clip = tiny_clip_files(tmp_path)["clip_l"]
    async with daemon_process(*BASE_ARGS, "--clip-l", str(clip)) as (_, ready):
        async with AsyncDaemonClient(ready.host, ready.port, shared_memory=False) as client:
            await client.clip_encode("warm up")
            baseline = await _pings(client, count=2000)
            print()
            print(_line("ping, idle (baseline)", baseline))

            # The flooder runs in its own process: in this one it would starve our own pings.
            flooder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.helpers.ws_flooder",
                f"ws://{ready.host}:{ready.ws_port}",
                "12",
                stdout=asyncio.subprocess.PIPE,
                cwd=str(REPO_ROOT),
            )
            assert (await flooder.stdout.readline()).strip() == b"flooding"
            deadline = time.perf_counter() + 10.0
            during = await _pings(client, until=lambda: time.perf_counter() > deadline)
            flooder_out, _ = await flooder.communicate()
            print(_line(f"ping, get_status flood ({flooder_out.decode().strip()})", during, baseline))

            rng = random.Random(0)
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(100_000))
            job = asyncio.ensure_future(client.request("clip_encode", {"text": word}))
            started = time.perf_counter()
            during_word = await _pings(client, until=job.done)
            await job
            took = time.perf_counter() - started
            print(_line(f"ping, 100k-letter word encoding ({took:.2f} s)", during_word, baseline))


def test_bench_bounded_bpe_vs_the_reference_loop():
    from daemon.models.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer.from_file()
    rng = random.Random(1)
    print()
    for length in (2_000, 16_000):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        symbols = "".join(tokenizer.byte_encoder[b] for b in word.encode())
        started = time.perf_counter()
        ours = tokenizer._bpe(symbols)
        bounded = time.perf_counter() - started
        started = time.perf_counter()
        reference = quadratic_reference_bpe(tokenizer.ranks, symbols)
        quadratic = time.perf_counter() - started
        assert ours == reference
        print(
            f"BPE of a {length:6d}-letter word: bounded {bounded * 1000:8.1f} ms, "
            f"reference loop {quadratic * 1000:9.1f} ms (×{quadratic / bounded:.0f})"
        )
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(100_000))
    started = time.perf_counter()
    tokenizer.encode(word)
    print(f"encode() of a 100,000-letter word (the prompt limit): {time.perf_counter() - started:.3f} s")


@pytest.mark.timeout(600)
async def test_bench_ping_latency_while_slow_clients_are_held():
    async with daemon_process(*BASE_ARGS, "--status-interval", "0.05") as (_, ready):
        async with AsyncDaemonClient(ready.host, ready.port, shared_memory=False) as client:
            baseline = await _pings(client, count=2000)
            ping = frame_bytes(encode_request(Request(1, "ping")))
            loris = []
            for _ in range(60):
                sock = socket.create_connection((ready.host, ready.port))
                sock.setblocking(False)
                loris.append(sock)
            sleepers = [
                await connect(f"ws://{ready.host}:{ready.ws_port}", max_queue=1, close_timeout=0.05)
                for _ in range(20)
            ]
            # max_queue=1 and nobody calls recv(): they stop reading after one message, so the
            # daemon's per-client queue (newest status only) must absorb the rest.
            samples: list[float] = []
            for position in range(len(ping) - 1):  # one byte per connection per round
                for sock in loris:
                    sock.send(ping[position : position + 1])
                samples += await _pings(client, count=50)
            print()
            print(_line("ping, idle (baseline)", baseline))
            print(_line("ping, 60 slow-loris TCP + 20 non-reading WS", samples, baseline))
            for sock in loris:
                sock.close()
            for sleeper in sleepers:
                sleeper.transport.abort()


@pytest.mark.timeout(600)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal")
async def test_bench_time_to_exit_on_sigterm_with_a_decode_running(tmp_path):
    vae = tiny_vae_file(tmp_path)
    for grace in (5.0, 1.0):
        args = (*BASE_ARGS, "--vae", str(vae), "--status-interval", "0.05", "--shutdown-grace", str(grace))
        env = {"LUNA_TEST_DECODE_BLOCK": "300"}
        async with daemon_process(*args, env=env, module="tests.helpers.slow_daemon") as (proc, ready):
            async with (
                AsyncDaemonClient(ready.host, ready.port, shared_memory=False) as client,
                ws_recorder(ready.host, ready.ws_port) as ws,
            ):
                job = asyncio.ensure_future(client.vae_decode(np.zeros((1, 4, 8, 8), np.float32)))
                await ws.next("status", where=lambda data: data["vae_pool"]["busy_workers"] == 1)
                started = time.perf_counter()
                os.kill(ready.pid, signal.SIGTERM)
                await proc.wait()
                took = time.perf_counter() - started
                job.cancel()
        print(
            f"\nSIGTERM, decode blocking 300 s, grace {grace:.0f} s: exit {took:.2f} s (code {proc.returncode})"
        )
