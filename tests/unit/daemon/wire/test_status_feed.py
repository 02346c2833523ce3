"""AsyncStatusFeed against real WebSocket servers on port 0: typed events, get_status, reconnect."""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.asyncio.server import serve

from daemon.status_ws import StatusWebSocket
from daemon.wire.status import DaemonStatus, PoolStatus, ScalingEvent, StaticFacts
from daemon.wire.status_feed import (
    AsyncStatusFeed,
    FeedState,
    FeedStateChanged,
    FeedUnavailable,
    MalformedMessage,
    _Subscriber,
)


def status(n: int, *, full: bool) -> DaemonStatus:
    return DaemonStatus(
        status="ok",
        version="0.1.0-static",
        device="cpu",
        precision="fp32",
        uptime_seconds=float(n),
        total_requests=n,
        vram_used_gb=1.0,
        vram_total_gb=2.0,
        vae_pool=PoolStatus("vae", 1, 0, 0),
        clip_pool=PoolStatus("clip", 1, 0, 0),
        sampled_at=1.0,
        static=StaticFacts(n, 1, 1, 2, "cpu", "system", {"n": n}) if full else None,
    )


class Provider:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *, full: bool) -> DaemonStatus:
        self.calls += 1
        return status(self.calls, full=full)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def next_of(events, kind, predicate=lambda e: True, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        async for event in events:
            if isinstance(event, kind) and predicate(event):
                return event
    raise AssertionError(f"the feed ended before a {kind.__name__}")


async def test_feed_yields_typed_statuses_and_scaling_events_and_answers_get_status():
    server = StatusWebSocket(Provider(), port=0, interval=0.05)
    _, port = await server.start()
    try:
        async with AsyncStatusFeed("127.0.0.1", port) as feed:
            events = feed.subscribe()
            first = await next_of(events, DaemonStatus)
            assert first.static is not None and feed.static == first.static
            tick = await next_of(events, DaemonStatus)
            assert tick.static is None and tick.uptime_seconds > first.uptime_seconds
            assert feed.state is FeedState.CONNECTED and feed.latest is not None
            server.publish_scaling(ScalingEvent("scale_up", "vae", 1, 2, 3.5))
            assert await next_of(events, ScalingEvent) == ScalingEvent("scale_up", "vae", 1, 2, 3.5)
            full = await feed.get_status(timeout=5)
            assert full.static is not None and full.static.config["n"] == full.total_requests
    finally:
        await server.close()


async def test_daemon_restarted_under_the_feed_it_reconnects_and_yields_again():
    port = free_port()
    server = StatusWebSocket(Provider(), port=port, interval=0.05)
    await server.start()
    feed = await AsyncStatusFeed("127.0.0.1", port, backoff_initial=0.02, backoff_max=0.1).start()
    events = feed.subscribe()
    try:
        await next_of(events, DaemonStatus)
        await server.close()
        lost = await next_of(events, FeedStateChanged, lambda e: e.state is not FeedState.CONNECTED)
        assert lost.state in (FeedState.RECONNECTING, FeedState.OFFLINE) and lost.error
        with pytest.raises(FeedUnavailable):
            await feed.get_status(timeout=1)
        await next_of(events, FeedStateChanged, lambda e: e.state is FeedState.OFFLINE)
        server = StatusWebSocket(Provider(), port=port, interval=0.05)
        await server.start()
        await next_of(events, FeedStateChanged, lambda e: e.state is FeedState.CONNECTED)
        again = await next_of(events, DaemonStatus)
        assert again.static is not None and again.uptime_seconds == 1.0  # a new daemon's first status
        assert feed.connects == 2
    finally:
        await feed.aclose()
        await server.close()


@pytest.mark.expect_log_warnings
async def test_malformed_message_is_a_typed_event_and_the_feed_goes_on():
    async def handler(connection):
        await connection.send('{"type":"status","data":{"status":"ok"}}')  # missing fields
        await connection.send("[[[[")
        await connection.send(status(1, full=True).to_json())
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with AsyncStatusFeed("127.0.0.1", port) as feed:
            events = feed.subscribe()
            bad = await next_of(events, MalformedMessage)
            assert "status.vae_pool is missing" in str(bad.error)
            worse = await next_of(events, MalformedMessage)
            assert "not valid JSON" in str(worse.error)
            good = await next_of(events, DaemonStatus)
            assert good.uptime_seconds == 1.0 and feed.state is FeedState.CONNECTED


async def test_no_daemon_means_offline_with_the_reason_and_aclose_ends_the_iteration():
    feed = await AsyncStatusFeed("127.0.0.1", free_port(), backoff_initial=0.01).start()
    events = feed.subscribe()
    offline = await next_of(events, FeedStateChanged, lambda e: e.state is FeedState.OFFLINE)
    assert "refused" in offline.error
    await feed.aclose()
    rest = [event async for event in events]
    assert rest and rest[-1] == FeedStateChanged(FeedState.CLOSED, None, rest[-1].at, 0)


def test_a_slow_subscriber_loses_old_statuses_first_never_state_changes_or_scaling():
    subscriber = _Subscriber(max_pending=3)
    state = FeedStateChanged(FeedState.CONNECTED, None, 0.0)
    scaling = ScalingEvent("scale_up", "vae", 1, 2, 1.0)
    subscriber.put(state)
    subscriber.put(status(1, full=False))
    subscriber.put(scaling)
    subscriber.put(status(2, full=False))
    subscriber.put(status(3, full=False))
    assert list(subscriber.pending) == [state, scaling, status(3, full=False)]
    assert subscriber.dropped == 2
