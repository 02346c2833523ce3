"""The daemon health gate over the real status WebSocket server: up, shutting down, down, silent."""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.server import serve

from app.narrates.health import DaemonHealthGate
from daemon.status_ws import StatusWebSocket
from daemon.wire.status import DaemonStatus, PoolStatus, StaticFacts
from daemon.wire.status_feed import AsyncStatusFeed


def provider(state: str = "ok"):
    def make(*, full: bool) -> DaemonStatus:
        return DaemonStatus(
            status=state,
            version="t",
            device="cpu",
            precision="fp32",
            uptime_seconds=1.0,
            total_requests=0,
            vram_used_gb=0.0,
            vram_total_gb=0.0,
            vae_pool=PoolStatus("vae", 1, 0, 0),
            clip_pool=PoolStatus("clip", 1, 0, 0),
            sampled_at=1.0,
            static=StaticFacts(1, 1, 1, 2, "cpu", "system", {}) if full else None,
        )

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_ok_daemon_is_up_one_shot_and_through_a_long_lived_feed():
    server = StatusWebSocket(provider(), port=0, interval=0.05)
    _, port = await server.start()
    try:
        assert await DaemonHealthGate(port=port, timeout=5.0)() is True
        async with AsyncStatusFeed("127.0.0.1", port) as feed:
            assert await DaemonHealthGate(feed, timeout=5.0)() is True
    finally:
        await server.close()


async def test_a_daemon_shutting_down_is_not_up():
    server = StatusWebSocket(provider("shutting_down"), port=0, interval=0.05)
    _, port = await server.start()
    try:
        assert await DaemonHealthGate(port=port, timeout=5.0)() is False
    finally:
        await server.close()


async def test_no_daemon_is_down_with_the_reason():
    gate = DaemonHealthGate(port=free_port(), timeout=5.0)
    assert await gate() is False and "refused" in gate.last_error


async def test_a_silent_daemon_is_down_within_the_timeout():
    async def silent(connection):  # accepts, never sends a status
        await connection.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        gate = DaemonHealthGate(port=port, timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await gate() is False
        assert loop.time() - started < 3.0 and gate.last_error
