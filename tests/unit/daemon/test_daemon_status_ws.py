"""StatusWebSocket on port 0: the original daemon's messages, passive listeners, origins, /healthz."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon.status_ws import FULL_STATUS, MESSAGE_BURST, STATUS, StatusWebSocket, _Client
from daemon.wire.status import (
    DaemonStatus,
    ModelState,
    PoolStatus,
    ScalingEvent,
    StaticFacts,
    parse_status_message,
)


def sample_status(n: int, *, full: bool, pad: int = 0) -> DaemonStatus:
    """A real status message whose uptime counts the provider's calls."""
    static = StaticFacts(1, 1, 1, 2, "cpu", "system", {"pad": ""}) if full else None
    # pad: every message (ticks too) carries that many bytes, to fill a client that never reads
    models = {"pad": {"vae": ModelState("x" * pad)}} if pad else {}
    return DaemonStatus(
        status="ok",
        version="0.1.0-static",
        device="cpu",
        precision="fp32",
        uptime_seconds=float(n),
        total_requests=0,
        vram_used_gb=1.0,
        vram_total_gb=2.0,
        vae_pool=PoolStatus("vae", 1, 0, 0),
        clip_pool=PoolStatus("clip", 1, 0, 0),
        sampled_at=1.0,
        models=models,
        static=static,
    )


class Counter:
    def __init__(self, pad: int = 0) -> None:
        self.calls = 0
        self.full_calls = 0
        self.pad = pad

    def __call__(self, *, full: bool) -> DaemonStatus:
        self.calls += 1
        self.full_calls += full
        return sample_status(self.calls, full=full, pad=self.pad)


@pytest.fixture
async def ws_server():
    servers = []

    async def make(**kw):
        server = StatusWebSocket(kw.pop("provider", Counter()), port=0, **kw)
        host, port = await server.start()
        servers.append(server)
        return server, f"ws://{host}:{port}"

    yield make
    for server in servers:
        await server.close()


async def recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_status_on_connect_then_passive_listener_gets_periodic_updates(ws_server):
    _, uri = await ws_server(interval=0.02)
    async with connect(uri) as ws:
        seen = [await recv_json(ws) for _ in range(4)]
    assert all(m["type"] == "status" and m["data"]["status"] == "ok" for m in seen)
    numbers = [m["data"]["uptime_seconds"] for m in seen]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4


async def test_get_status_is_answered_immediately(ws_server):
    _, uri = await ws_server(interval=3600)
    async with connect(uri) as ws:
        first = await recv_json(ws)
        await ws.send(json.dumps({"type": "get_status"}))
        second = await recv_json(ws)
    assert second["type"] == "status" and second["data"]["uptime_seconds"] > first["data"]["uptime_seconds"]


async def test_static_facts_come_on_connect_and_in_get_status_replies_but_not_at_1_hz(ws_server):
    _, uri = await ws_server(interval=0.02)
    async with connect(uri) as ws:
        first = parse_status_message(await asyncio.wait_for(ws.recv(), 5))
        tick = parse_status_message(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps({"type": "get_status"}))
        async with asyncio.timeout(10):
            while True:  # ticks may come first; the reply is the one with static facts
                reply = parse_status_message(await ws.recv())
                if reply.static is not None:
                    break
    assert first.static is not None and first.static.config == {"pad": ""}
    assert tick.static is None and "config" not in tick.to_data()


async def test_get_status_flood_is_coalesced_and_a_good_client_still_gets_its_ticks(ws_server):
    provider = Counter()
    server, uri = await ws_server(interval=0.05, provider=provider, get_status_interval=0.2)
    async with connect(uri) as flooder, connect(uri) as listener:
        await recv_json(flooder)
        await recv_json(listener)
        for _ in range(MESSAGE_BURST - 10):  # a burst within the message budget
            await flooder.send('{"type":"get_status"}')
        ticks = [await recv_json(listener) for _ in range(3)]
        # every request is accounted for: answered at once, deferred once, or coalesced
        await flooder.send('{"type":"get_status"}')
        async with asyncio.timeout(10):
            reply = await recv_json(flooder)
            while reply["type"] != "status" or "config" not in reply["data"]:
                reply = await recv_json(flooder)
    assert all(t["type"] == "status" for t in ticks)
    assert server.get_status_coalesced >= MESSAGE_BURST - 20
    # a burst of requests costs a handful of full builds, not one each
    assert provider.full_calls < 20


async def test_a_client_flooding_messages_beyond_the_budget_is_closed_1008_and_others_carry_on(ws_server):
    provider = Counter()
    server, uri = await ws_server(interval=0.05, provider=provider)
    async with connect(uri) as flooder, connect(uri) as listener:
        await recv_json(flooder)
        await recv_json(listener)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(10 * MESSAGE_BURST):
                await flooder.send('{"type":"get_status"}')
            while True:  # the replies queued before the close, then the close
                await recv_json(flooder)
        assert closed.value.rcvd.code == 1008 and server.closed_flooding == 1
        assert provider.full_calls < 20
        for _ in range(3):
            assert (await recv_json(listener))["type"] == "status"
        # the flooder's slot is free again at once (not after the close timeout)
        async with asyncio.timeout(2):
            while server.client_count != 1:
                await asyncio.sleep(0)


async def test_deeply_nested_or_oversize_client_message_gets_an_error_reply_not_a_1011(ws_server):
    _, uri = await ws_server(interval=3600)
    async with connect(uri) as ws:
        await recv_json(ws)
        await ws.send("[" * 3000)
        error = await recv_json(ws)
        assert error["type"] == "error" and "nests deeper" in error["data"]["message"]
        await ws.send(json.dumps({"type": "get_status"}))
        assert (await recv_json(ws))["type"] == "status"
    async with connect(uri) as ws:
        await recv_json(ws)
        await ws.send("[" * 60000)  # over the client message limit: closed with 1009, daemon lives
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd.code == 1009
    async with connect(uri) as ws:
        assert (await recv_json(ws))["type"] == "status"


async def test_unknown_message_gets_an_error_and_the_connection_lives(ws_server):
    _, uri = await ws_server(interval=3600)
    async with connect(uri) as ws:
        await recv_json(ws)
        await ws.send("not json")
        error = await recv_json(ws)
        assert error["type"] == "error"
        await ws.send(json.dumps({"type": "get_status"}))
        assert (await recv_json(ws))["type"] == "status"


async def test_scaling_event_reaches_every_client_field_by_field(ws_server):
    server, uri = await ws_server(interval=3600)
    event = ScalingEvent("scale_up", "vae", 2, 3, 4.5)
    async with connect(uri) as a, connect(uri) as b:
        await recv_json(a)
        await recv_json(b)
        while server.client_count < 2:
            await asyncio.sleep(0)
        server.publish_scaling(event)
        for ws in (a, b):
            assert await recv_json(ws) == {
                "type": "scaling",
                "data": {
                    "event": "scale_up",
                    "pool": "vae",
                    "worker_id": 2,
                    "active_workers": 3,
                    "vram_available_gb": 4.5,
                },
            }


async def test_browser_origin_is_refused_unless_configured(ws_server):
    _, uri = await ws_server(interval=3600, allowed_origins=["http://localhost:3000"])
    with pytest.raises(InvalidStatus) as refused:
        async with connect(uri, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with connect(uri, origin="http://localhost:3000") as ws:
        assert (await recv_json(ws))["type"] == "status"


async def test_healthz_answers_plain_http(ws_server):
    _, uri = await ws_server(interval=3600)
    async with httpx.AsyncClient() as client:
        response = await client.get(uri.replace("ws://", "http://") + "/healthz", timeout=5)
    assert response.status_code == 200 and response.text == "ok\n"


async def test_a_client_that_never_reads_does_not_stall_others(ws_server):
    server, uri = await ws_server(interval=0.01, provider=Counter(pad=50_000))
    # close_timeout: the sleepy client never reads, so it cannot see the server's close frame.
    async with connect(uri, max_queue=1, close_timeout=0.05) as sleepy, connect(uri) as busy:
        received = [await recv_json(busy) for _ in range(20)]
        assert len(received) == 20
        assert sleepy.state.name == "OPEN"


def test_client_queue_keeps_only_the_newest_status_but_every_scaling_event():
    class FakeConnection:
        remote_address = ("127.0.0.1", 1)

    async def run():
        client = _Client(FakeConnection(), max_pending=4)
        for i in range(10):
            client.enqueue(STATUS, f"s{i}")
        client.enqueue("scaling", "up")
        client.enqueue(STATUS, "s10")
        return list(client.pending), client.dropped

    pending, dropped = asyncio.run(run())
    assert pending == [("scaling", "up"), (STATUS, "s10")]
    assert dropped == 10


def test_a_tick_never_swallows_a_pending_full_status():
    class FakeConnection:
        remote_address = ("127.0.0.1", 1)

    async def run():
        client = _Client(FakeConnection(), max_pending=4)
        client.enqueue(STATUS, "tick1")
        client.enqueue(FULL_STATUS, "full")  # a get_status reply: supersedes the tick
        client.enqueue(STATUS, "tick2")  # must not drop the reply
        return list(client.pending)

    assert asyncio.run(run()) == [(FULL_STATUS, "full"), (STATUS, "tick2")]


# ------------------------------------------------------------------ token (non-loopback binds)

WS_TOKEN = "ws-token-for-tests-0123456789abcdef"


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [
        ("", None),
        ("", {"Authorization": "Bearer wrong"}),
        ("", {"Authorization": f"Basic {WS_TOKEN}"}),
        ("", {"Authorization": "Bearer " + WS_TOKEN[:-1]}),
        ("?token=wrong", None),
        ("?token=%ED%A0%80", None),  # the UTF-8 bytes of a lone surrogate
        ("?token=" + WS_TOKEN[:-1] + "%00", None),
        ("?" + "&".join(f"f{i}=1" for i in range(40)) + f"&token={WS_TOKEN}", None),
    ],
)
async def test_without_the_token_the_handshake_is_refused_401_and_a_member_keeps_its_ticks(
    ws_server, suffix, headers
):
    provider = Counter()
    server, uri = await ws_server(interval=0.05, token=WS_TOKEN, provider=provider)
    member_headers = {"Authorization": f"Bearer {WS_TOKEN}"}
    async with connect(uri, additional_headers=member_headers) as member:
        first = parse_status_message(await asyncio.wait_for(member.recv(), 5))
        assert first.static is not None  # the member sees the static facts
        built = provider.full_calls
        with pytest.raises(InvalidStatus) as refused:
            async with connect(uri + "/" + suffix, additional_headers=headers):
                pass
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"pid" not in response.body and b"config" not in response.body
        assert provider.full_calls == built  # nothing about the daemon was built for the stranger
        assert server.refused_unauthorized == 1 and server.client_count == 1
        for _ in range(2):  # the member is not disturbed
            assert (await recv_json(member))["type"] == "status"


async def test_the_token_is_accepted_as_a_bearer_header_or_a_query_parameter(ws_server):
    _, uri = await ws_server(interval=3600, token=WS_TOKEN)
    async with connect(uri, additional_headers={"Authorization": f"bearer  {WS_TOKEN} "}) as ws:
        assert (await recv_json(ws))["type"] == "status"
    async with connect(f"{uri}/?token={WS_TOKEN}") as ws:
        assert (await recv_json(ws))["type"] == "status"


async def test_healthz_stays_open_under_a_token_and_tells_nothing(ws_server):
    _, uri = await ws_server(interval=3600, token=WS_TOKEN)
    async with httpx.AsyncClient() as client:
        response = await client.get(uri.replace("ws://", "http://") + "/healthz", timeout=5)
    assert response.status_code == 200 and response.text == "ok\n"


async def test_the_apps_status_feed_authenticates_with_the_token(ws_server):
    from daemon.wire.status_feed import AsyncStatusFeed

    server, uri = await ws_server(interval=3600, token=WS_TOKEN)
    host, port = uri.removeprefix("ws://").rsplit(":", 1)
    async with AsyncStatusFeed(host, int(port), token=WS_TOKEN) as feed:
        async with asyncio.timeout(5):
            async for event in feed:
                if isinstance(event, DaemonStatus):
                    break
    assert event.static is not None and server.refused_unauthorized == 0


async def test_status_clients_over_the_limit_are_refused_503_and_the_others_keep_their_ticks(ws_server):
    provider = Counter()
    server, uri = await ws_server(interval=0.05, provider=provider, max_clients=2)
    async with connect(uri) as first, connect(uri) as second:
        await recv_json(first)
        await recv_json(second)
        built = provider.full_calls
        with pytest.raises(InvalidStatus) as refused:
            async with connect(uri):
                pass
        assert refused.value.response.status_code == 503 and server.refused_busy == 1
        assert provider.full_calls == built  # no status was built for the refused one
        assert (await recv_json(first))["type"] == "status"
        assert (await recv_json(second))["type"] == "status"
    async with connect(uri) as later:  # slots free again once clients leave
        assert (await recv_json(later))["type"] == "status"
