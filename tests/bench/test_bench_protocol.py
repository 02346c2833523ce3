"""Protocol throughput: a 64 MiB tensor round trip through TcpService + DaemonClient, measured
side by side with a raw loopback socket echoing the same bytes (goal ≥ 0.8×), and through the
shared-memory path, which is also given as a multiple of one memcpy of the payload measured in
the same rounds (into a warm buffer, as the segments are; goal ≤ 2.5×: the path copies twice,
into the segment and the daemon's answer into the reply area, and returns a view on it).
Run: pytest tests/bench/test_bench_protocol.py -m bench -s -p no:randomly."""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time

import numpy as np
import pytest

from daemon.tcp_service import TcpService
from daemon.wire.client import DaemonClient
from daemon.wire.protocol import Limits

PAYLOAD_BYTES = 64 << 20
REPEATS = 15


class EchoHandler:
    """Returns its input tensors: the op costs nothing, so the figures are pure transport."""

    async def handle(self, op, options, tensors, peer):
        return {}, tensors


class ServiceThread:
    """A TcpService on its own event loop thread, like the daemon next to a ComfyUI process."""

    def __init__(self):
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop_requested: asyncio.Event | None = None
        self.address = None

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self):
        self.stop_requested = asyncio.Event()
        service = TcpService(
            EchoHandler(),
            host="127.0.0.1",
            port=0,
            token=None,
            limits=Limits(max_payload_bytes=1 << 30),
            ops=("echo",),
        )
        self.address = await service.start()
        self.ready.set()
        await self.stop_requested.wait()
        await service.close()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop_requested.set)
        self.thread.join(30)


class RawEcho:
    """The same bytes through a plain socket pair: a server thread does recv_into + sendall
    on a preallocated buffer, the client sends and receives into a reused buffer (the
    strictest baseline: no allocation, no framing, no Python per byte)."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.server = threading.Thread(target=self._serve)
        self.server.start()
        self.sock = socket.create_connection(self.listener.getsockname())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.target = memoryview(bytearray(nbytes))

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            buffer = memoryview(bytearray(self.nbytes))
            while True:
                got = 0
                while got < self.nbytes:
                    received = conn.recv_into(buffer[got:])
                    if not received:
                        return
                    got += received
                conn.sendall(buffer)

    def round_trip(self, data: np.ndarray) -> float:
        started = time.perf_counter()
        self.sock.sendall(memoryview(data.reshape(-1).view(np.uint8)))
        got = 0
        while got < self.nbytes:
            got += self.sock.recv_into(self.target[got:])
        return time.perf_counter() - started

    def close(self):
        self.sock.close()
        self.server.join(30)
        self.listener.close()


def memcpy(target: np.ndarray, data: np.ndarray) -> float:
    started = time.perf_counter()
    np.copyto(target, data)
    return time.perf_counter() - started


def protocol_round_trip(client: DaemonClient, data: np.ndarray) -> float:
    started = time.perf_counter()
    _, (echoed,) = client.request("echo", {}, (data,))
    elapsed = time.perf_counter() - started
    assert echoed.shape == data.shape and echoed[-1] == data[-1]
    return elapsed


@pytest.mark.bench
def test_bench_64mib_round_trip_protocol_vs_raw_socket():
    data = np.random.default_rng(0).random(PAYLOAD_BYTES // 4, dtype=np.float32)
    raw, tcp, shm, copy = [], [], [], []
    target = np.ones_like(data)  # written once already: warm pages, like a reused segment
    raw_echo = RawEcho(data.nbytes)
    try:
        with (
            ServiceThread() as service,
            DaemonClient(*service.address, shared_memory=False, timeout=60) as tcp_client,
            DaemonClient(*service.address, shared_memory=True, timeout=60) as shm_client,
        ):
            assert not tcp_client.uses_shared_memory and shm_client.uses_shared_memory
            for round_index in range(REPEATS + 1):
                # Interleaved one by one so background load hits all three alike; round 0 warms up.
                samples = (
                    raw_echo.round_trip(data),
                    protocol_round_trip(tcp_client, data),
                    protocol_round_trip(shm_client, data),
                    memcpy(target, data),
                )
                if round_index:
                    for series, sample in zip((raw, tcp, shm, copy), samples):
                        series.append(sample)
    finally:
        raw_echo.close()
    mib = PAYLOAD_BYTES / (1 << 20)
    for label, pick in (("median", statistics.median), ("best", min)):
        raw_s, tcp_s, shm_s, copy_s = pick(raw), pick(tcp), pick(shm), pick(copy)
        print(
            f"\n64 MiB round trip, {label} of {len(raw)}: raw socket {raw_s * 1e3:.1f} ms "
            f"({2 * mib / raw_s:.0f} MiB/s), protocol over TCP {tcp_s * 1e3:.1f} ms "
            f"({2 * mib / tcp_s:.0f} MiB/s), protocol over shared memory {shm_s * 1e3:.1f} ms "
            f"({2 * mib / shm_s:.0f} MiB/s); one 64 MiB memcpy {copy_s * 1e3:.1f} ms"
        )
        print(
            f"  throughput ratio TCP/raw = {raw_s / tcp_s:.2f}x (goal >= 0.8x), "
            f"shm/raw = {raw_s / shm_s:.2f}x; shm round trip = {shm_s / copy_s:.2f} memcpy "
            f"(goal <= 2.5)"
        )
