"""Issue 9: header values of the wrong type, shapes with a zero beside a huge dimension, tokens
that are not valid UTF-8, idle anonymous connections, shared-memory names outside the protocol's
format. Each case sends the bad input to a real TcpService (or the real daemon) on port 0, checks
the typed answer, and then shows that a good request from ANOTHER client is still answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from daemon.tcp_service import TcpService
from daemon.wire.protocol import (
    MAGIC,
    PREFIX,
    ErrorCode,
    ErrorResponse,
    Limits,
    Request,
    Response,
)
from daemon.wire.shm import ShmArena, probe_create
from tests.helpers.daemon_fixtures import daemon_config, running_daemon
from tests.integration.test_daemon_tcp_service import (
    OPS,
    TOKEN,
    NumpyOps,
    RawConnection,
    assert_good_request_succeeds,
)

pytestmark = pytest.mark.integration

LONE_SURROGATE = "\ud800"


def raw_frame(header: dict, payload: bytes = b"") -> bytes:
    # json.dumps escapes a lone surrogate as "\ud800": legal JSON that is not valid UTF-8 text.
    body = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, len(body), len(payload)) + body + payload


class Harness:
    """A TcpService with NumpyOps on port 0 and connections that are always closed."""

    def __init__(self) -> None:
        self.services: list[TcpService] = []
        self.connections: list[RawConnection] = []

    async def start(self, *, token: str | None = None, limits: Limits | None = None) -> TcpService:
        service = TcpService(
            NumpyOps(),
            host="127.0.0.1",
            port=0,
            token=token,
            limits=limits or Limits(read_timeout=5.0),
            ops=OPS,
        )
        await service.start()
        self.services.append(service)
        return service

    async def connect(self, service: TcpService, *, token: str | None = None) -> RawConnection:
        connection = await RawConnection.open(service.address)
        self.connections.append(connection)
        if token is not None:
            hello = await connection.call(Request(1, "hello", {"token": token}))
            assert isinstance(hello, Response) and hello.result["authenticated"]
        return connection

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()
        for service in self.services:
            await service.close(grace=1.0)


@pytest.fixture
async def harness():
    h = Harness()
    yield h
    await h.close()


def tensor_header(descriptor: dict, request_id: int = 8) -> dict:
    return {"v": 1, "id": request_id, "op": "echo", "options": {}, "tensors": [descriptor]}


# ------------------------------------------------------------------ 1. types before membership


@pytest.mark.parametrize(
    "field",
    [
        {"dtype": ["float32"]},
        {"dtype": {"float32": 1}},
        {"dtype": 7},
        {"dtype": None},
        {"shape": {"a": 1}},
        {"shape": [[1]]},
        {"shape": [True]},
        {"nbytes": [4]},
        {"nbytes": "4"},
        {"shm": {"segment": ["lu0123456789_1"], "offset": 0}},
        {"shm": {"segment": "lu0123456789_1", "offset": [0]}},
        {"shm": []},
    ],
)
async def test_header_values_of_the_wrong_type_are_bad_request_and_the_connection_lives(harness, field):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    await attacker.send(raw_frame(tensor_header({"dtype": "float32", "shape": [1], "nbytes": 4, **field})))
    answer = await attacker.receive()
    assert answer == ErrorResponse(8, ErrorCode.BAD_REQUEST, answer.message, False)
    await assert_good_request_succeeds(attacker)  # same connection: kept
    await assert_good_request_succeeds(bystander)


@pytest.mark.parametrize(
    "header",
    [
        {"v": [1], "id": 8, "op": "echo"},
        {"v": {"1": 1}, "id": 8, "op": "echo"},
        {"v": 1, "id": 8, "op": ["echo"]},
        {"v": 1, "id": 8, "op": {"echo": 1}},
        {"v": 1, "id": 8, "op": "echo", "options": ["x"]},
        {"v": 1, "id": 8, "op": "echo", "tensors": {"0": {}}},
        {"v": 1, "id": 8, "op": "echo", "options": {"wire_dtype": ["float16"]}},
        {"v": 1, "id": 8, "op": "echo", "options": {"wire_dtype": {"float16": 1}}},
        {"v": 1, "id": 8, "op": "hello", "options": {"versions": [[1]]}},
        {"v": 1, "id": 8, "op": "hello", "options": {"versions": {"1": 1}}},
        {"v": 1, "id": 8, "op": "hello", "options": {"token": ["x"]}},
        {"v": 1, "id": 8, "op": "hello", "options": {"shm": ["lu0123456789"]}},
        {"v": 1, "id": 8, "ok": False, "error": {"code": ["BUSY"]}},
    ],
)
async def test_every_header_field_checks_its_type_first(harness, header):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    await attacker.send(raw_frame(header))
    answer = await attacker.receive()
    assert isinstance(answer, ErrorResponse) and answer.id == 8
    assert answer.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION)
    await assert_good_request_succeeds(attacker)
    await assert_good_request_succeeds(bystander)


# ------------------------------------------------------------------ 2. every dimension bounded


@pytest.mark.parametrize(
    "shape",
    [[0, 2**63], [0, 2**40, 2**40], [2**63, 0], [0, 2**28 + 1], [0, 2**20, 2**20], [0] * 7 + [2**64]],
)
async def test_empty_shape_beside_a_huge_dimension_is_bad_request(harness, shape):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    await attacker.send(raw_frame(tensor_header({"dtype": "float32", "shape": shape, "nbytes": 0})))
    answer = await attacker.receive()
    assert answer.code is ErrorCode.BAD_REQUEST and answer.id == 8
    assert "dimension" in answer.message or "spans" in answer.message
    await assert_good_request_succeeds(attacker)
    await assert_good_request_succeeds(bystander)


async def test_an_honest_empty_tensor_still_round_trips(harness):
    service = await harness.start()
    connection = await harness.connect(service)
    answer = await connection.call(Request(3, "echo", {}, (np.zeros((0, 3, 1024), np.float32),)))
    assert isinstance(answer, Response) and answer.tensors[0].shape == (0, 3, 1024)


# ------------------------------------------------------------------ 3. tokens that are not UTF-8


@pytest.mark.expect_log_warnings  # "wrong token from …"
async def test_hello_with_a_lone_surrogate_token_is_unauthorized_and_the_connection_lives(harness):
    service = await harness.start(token=TOKEN)
    bystander = await harness.connect(service, token=TOKEN)
    attacker = await harness.connect(service)
    for token in (LONE_SURROGATE, TOKEN[:-1] + LONE_SURROGATE, "\udfff" * 40):
        await attacker.send(raw_frame({"v": 1, "id": 8, "op": "hello", "options": {"token": token}}))
        answer = await attacker.receive()
        assert answer == ErrorResponse(8, ErrorCode.UNAUTHORIZED, answer.message, False)
    refused = await attacker.call(Request(9, "echo"))
    assert refused.code is ErrorCode.UNAUTHORIZED  # still not authenticated
    hello = await attacker.call(Request(10, "hello", {"token": TOKEN}))
    assert hello.result["authenticated"] is True  # and the connection is still usable
    await assert_good_request_succeeds(bystander)


async def test_peer_strings_with_lone_surrogates_never_break_an_answer(harness):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    await attacker.send(
        raw_frame({"v": 1, "id": 8, "op": "hello", "options": {"client": "node" + LONE_SURROGATE}})
    )
    hello = await attacker.receive()
    assert isinstance(hello, Response)
    await attacker.send(raw_frame({"v": 1, "id": 9, "op": "nope" + LONE_SURROGATE}))
    unknown = await attacker.receive()
    assert unknown.code is ErrorCode.BAD_REQUEST and unknown.id == 9
    await assert_good_request_succeeds(attacker)
    await assert_good_request_succeeds(bystander)
    assert service.snapshot()["connections_open"] == 2


async def test_shutdown_with_a_lone_surrogate_token_is_unauthorized_on_the_real_daemon():
    async with running_daemon(daemon_config()) as server:
        address = (server.ready.host, server.ready.port)
        bystander = await RawConnection.open(address)
        attacker = await RawConnection.open(address)
        try:
            await attacker.send(
                raw_frame({"v": 1, "id": 8, "op": "shutdown", "options": {"token": LONE_SURROGATE}})
            )
            answer = await attacker.receive()
            assert answer == ErrorResponse(8, ErrorCode.UNAUTHORIZED, answer.message, False)
            status = await bystander.call(Request(2, "status"))
            assert isinstance(status, Response) and status.result["status"] == "ok"
            assert isinstance(await attacker.call(Request(3, "ping")), Response)
        finally:
            await attacker.close()
            await bystander.close()


# ------------------------------------------------------------------ 8. idle anonymous connections


async def test_connections_that_never_authenticate_are_dropped_and_free_their_slots(harness):
    service = await harness.start(token=TOKEN, limits=Limits(max_connections=4, auth_timeout=0.3))
    member = await harness.connect(service, token=TOKEN)  # authenticated before the squatters
    squatters = [await harness.connect(service) for _ in range(3)]
    assert isinstance(await squatters[0].call(Request(5, "ping")), Response)  # ping needs no token
    refused = await harness.connect(service)  # 5th connection: over the limit
    # Read them all at once: a connection the daemon ends is reset after a short drain (so that
    # nothing lingers in FIN_WAIT on Windows), and a reset discards what the peer had not read yet.
    closed = await asyncio.gather(
        refused.is_closed_by_server(), *(s.is_closed_by_server() for s in squatters)
    )
    assert all(closed) and refused.ready[0].code is ErrorCode.BUSY
    for squatter in squatters:
        error = squatter.ready[-1]
        assert error.id == 0 and error.code is ErrorCode.UNAUTHORIZED and "authenticated" in error.message
    # The member has been connected longer than auth_timeout too: authenticated, it stays.
    await assert_good_request_succeeds(member)
    newcomer = await harness.connect(service, token=TOKEN)
    await assert_good_request_succeeds(newcomer)


async def test_without_a_token_idle_connections_are_not_timed_out(harness):
    service = await harness.start(limits=Limits(auth_timeout=0.05, read_timeout=0.05))
    idle = await harness.connect(service)
    stalled = await harness.connect(service)
    await stalled.send(b"LU")
    assert await stalled.is_closed_by_server()  # well past both timeouts now
    await assert_good_request_succeeds(idle)


# ------------------------------------------------------------------ 9. shared-memory names


BAD_SEGMENT_NAMES = [
    "Local\\Foo",
    "Global\\lu0123456789_1",
    "lu0123456789_1/../x",
    "/lu0123456789_1",
    "lu0123456789_",
    "lu0123456789_1g",
    "lu0123456789_1\x00",
    "lu0123456789-1",
    "LU0123456789_1",
    "lu012345678_1",
    "lu0123456789_" + "1" * 17,
    "lu0123456789_١",  # an Arabic-Indic digit: not hex
]


@pytest.mark.parametrize("segment", BAD_SEGMENT_NAMES)
async def test_segment_names_outside_the_protocol_format_are_bad_request(harness, segment):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    descriptor = {"dtype": "uint8", "shape": [4], "nbytes": 4, "shm": {"segment": segment, "offset": 0}}
    await attacker.send(raw_frame(tensor_header(descriptor)))
    answer = await attacker.receive()
    assert answer == ErrorResponse(8, ErrorCode.BAD_REQUEST, answer.message, False)
    assert "<prefix>_<hex>" in answer.message  # refused by its format, before any mapping
    reply = {"segment": segment, "offset": 0, "capacity": 64}
    await attacker.send(raw_frame({"v": 1, "id": 9, "op": "echo", "options": {"shm_reply": reply}}))
    answer = await attacker.receive()
    assert answer.id == 9 and answer.code is ErrorCode.BAD_REQUEST and "<prefix>_<hex>" in answer.message
    await assert_good_request_succeeds(attacker)
    await assert_good_request_succeeds(bystander)


@pytest.mark.parametrize(
    "offer",
    [
        {"prefix": "Lo", "probe": {"segment": "Local\\Foo", "nonce": "00" * 16}},
        {"prefix": "lu", "probe": {"segment": "lu_1", "nonce": "00" * 16}},
        {"prefix": "lu0123456789", "probe": {"segment": "lu0123456789_1/x", "nonce": "00" * 16}},
        {"prefix": "lu0123456789", "probe": {"segment": "lu9876543210_1", "nonce": "00" * 16}},
        {"prefix": "lu0123456789", "probe": {"segment": "lu0123456789_1", "nonce": "zz" * 16}},
        {"prefix": "lu0123456789", "probe": {"segment": "lu0123456789_1", "nonce": "00"}},
        {"prefix": "lu0123456789", "probe": "lu0123456789_1"},
        "lu0123456789",
    ],
)
async def test_malformed_shm_offers_in_hello_are_bad_request(harness, offer):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    await attacker.send(raw_frame({"v": 1, "id": 8, "op": "hello", "options": {"shm": offer}}))
    answer = await attacker.receive()
    assert answer == ErrorResponse(8, ErrorCode.BAD_REQUEST, answer.message, False)
    await assert_good_request_succeeds(attacker)
    await assert_good_request_succeeds(bystander)


async def test_a_negotiated_connection_cannot_name_another_connections_segment(harness):
    service = await harness.start()
    bystander = await harness.connect(service)
    attacker = await harness.connect(service)
    mine, victim = ShmArena(), ShmArena()
    probe = probe_create(mine)
    assert probe is not None
    try:
        segment, nonce = probe
        offer = {"prefix": mine.prefix, "probe": {"segment": segment.name, "nonce": nonce}}
        hello = await attacker.call(Request(1, "hello", {"shm": offer}))
        assert hello.result["shm"] is True
        secret = victim.lease(7, 1 << 16)
        assert secret is not None
        secret.segment.buf[:4] = b"mine"
        place = {"segment": secret.segment.name, "offset": 0}  # well formed, someone else's prefix
        descriptor = {"dtype": "uint8", "shape": [4], "nbytes": 4, "shm": place}
        await attacker.send(raw_frame(tensor_header(descriptor)))
        answer = await attacker.receive()
        assert answer.code is ErrorCode.BAD_REQUEST and "does not belong" in answer.message
        reply = {**place, "capacity": 1 << 16}
        answer = await attacker.call(Request(9, "echo", {"shm_reply": reply}, (np.ones(1 << 15, np.uint8),)))
        assert answer.code is ErrorCode.BAD_REQUEST and "does not belong" in answer.message
        assert bytes(secret.segment.buf[:4]) == b"mine"
        await assert_good_request_succeeds(attacker)
        await assert_good_request_succeeds(bystander)
    finally:
        probe[0].close()
        probe[0].unlink()
        mine.close()
        victim.close()


def test_probe_answer_and_attachments_refuse_names_outside_the_format():
    from daemon.wire.shm import ShmAttachments, probe_answer

    arena = ShmArena()
    try:
        lease = arena.lease(1, 64)
        attachments = ShmAttachments(arena.prefix)
        try:
            assert attachments.segment(lease.segment.name).size >= 64
            for name in BAD_SEGMENT_NAMES + [arena.prefix + "x", arena.prefix]:
                with pytest.raises(ValueError, match="does not belong"):
                    attachments.segment(name)
        finally:
            attachments.close()
        for prefix in ("Lo", "lu", "lu0123456789_", arena.prefix.upper(), "../etc"):
            with pytest.raises(ValueError):
                ShmAttachments(prefix)
        assert not probe_answer("Lo", "Local\\Foo", "00" * 16)
        assert not probe_answer(arena.prefix, arena.prefix + "/../x", "00" * 16)
    finally:
        arena.close()


# ------------------------------------------------------------------ 8. status WebSocket token


async def test_non_loopback_daemon_requires_the_token_on_the_status_websocket(luna_home):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from tests.helpers.daemon_fixtures import WsRecorder

    async with running_daemon(daemon_config(**{"network.host": "0.0.0.0"})) as server:
        token = (luna_home / "config" / "daemon.token").read_text().strip()
        uri = f"ws://127.0.0.1:{server.ready.ws_port}"
        member = WsRecorder(await connect(uri, additional_headers={"Authorization": f"Bearer {token}"}))
        try:
            first = (await member.next("status"))["data"]
            assert first["pid"] > 0 and "config" in first
            for attempt in (uri, f"{uri}/?token=guess", f"{uri}/?token={token[:-1]}"):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(attempt):
                        pass
                assert refused.value.response.status_code == 401
            await member.next("status")  # the member still gets its ticks
            async with connect(f"{uri}/?token={token}") as browser_like:
                assert json.loads(await browser_like.recv())["type"] == "status"
        finally:
            await member.close()


async def test_loopback_daemon_keeps_the_status_websocket_open_without_a_token():
    from tests.helpers.daemon_fixtures import ws_recorder

    async with running_daemon(daemon_config()) as server:
        async with ws_recorder(server.ready.host, server.ready.ws_port) as ws:
            assert (await ws.next("status"))["data"]["status"] == "ok"


# ------------------------------------------------------------------ 6. long words, deep nesting


async def test_the_longest_word_allowed_is_encoded_while_other_clients_are_answered(tmp_path):
    import random
    import string

    from daemon.ops import MAX_PROMPT_CHARS
    from daemon.wire.client import AsyncDaemonClient, DaemonError
    from tests.helpers.daemon_fixtures import tiny_clip_files

    files = tiny_clip_files(tmp_path)
    config = daemon_config(**{"models.default.clip_l": str(files["clip_l"])})
    rng = random.Random(1)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(MAX_PROMPT_CHARS))
    async with running_daemon(config) as server:
        address = (server.ready.host, server.ready.port)
        async with (
            AsyncDaemonClient(*address, shared_memory=False) as attacker,
            AsyncDaemonClient(*address, shared_memory=False) as bystander,
        ):
            await bystander.clip_encode("warm up")  # the model is loaded
            long_job = asyncio.ensure_future(attacker.request("clip_encode", {"text": word}))
            try:
                for _ in range(5):
                    assert await bystander.ping() > 0
                cond, _ = await bystander.clip_encode("a lighthouse")
                assert cond.shape == (1, 77, cond.shape[2])
                result, tensors = await asyncio.wait_for(long_job, 120)
            finally:
                long_job.cancel()
            assert result["kind"] == "sd15" and tensors[0].shape[1] % 77 == 0 and tensors[0].shape[1] > 77
            nested = "(" * 5000 + "x" + ":1)" * 5000
            with pytest.raises(DaemonError) as refused:
                await attacker.clip_encode(nested)
            assert refused.value.code is ErrorCode.BAD_REQUEST and "deeper than" in refused.value.message
            assert await bystander.ping() > 0


# ------------------------------------------------------------------ 7. SIGTERM under a long job


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal")
async def test_sigterm_with_a_decode_running_exits_within_the_grace(tmp_path):
    from daemon.wire.client import AsyncDaemonClient, DaemonError
    from tests.helpers.daemon_fixtures import daemon_process, tiny_vae_file, ws_recorder

    grace, block = 1.0, 120.0
    args = ("--port", "0", "--ws-port", "0", "--device", "cpu", "--precision", "fp32")
    args += ("--vae", str(tiny_vae_file(tmp_path)), "--status-interval", "0.05")
    args += ("--shutdown-grace", str(grace))
    env = {"LUNA_TEST_DECODE_BLOCK": str(block)}
    async with daemon_process(*args, env=env, module="tests.helpers.slow_daemon") as (proc, ready):
        address = (ready.host, ready.port)
        async with (
            AsyncDaemonClient(*address, shared_memory=False) as client,
            AsyncDaemonClient(*address, shared_memory=False) as bystander,
            ws_recorder(ready.host, ready.ws_port) as ws,
        ):
            latent = np.zeros((1, 4, 8, 8), np.float32)
            decode = asyncio.ensure_future(client.vae_decode(latent))
            try:
                await ws.next("status", where=lambda data: data["vae_pool"]["busy_workers"] == 1)
                assert await bystander.ping() > 0  # the stuck worker stalls nobody else
                started = time.monotonic()
                os.kill(ready.pid, signal.SIGTERM)  # the pid the READY line names
                with pytest.raises(DaemonError) as dropped:
                    await asyncio.wait_for(decode, grace + 10)
                assert dropped.value.code is ErrorCode.SHUTTING_DOWN and dropped.value.retryable
                await asyncio.wait_for(proc.wait(), grace + 10)
                elapsed = time.monotonic() - started
            finally:
                decode.cancel()
        _, err = await proc.communicate()
    log = err.decode()
    assert proc.returncode == 0, log[-2000:]
    assert "stopping: signal SIGTERM" in log and "stopped" in log and "still running" in log
    # within the grace plus the exit itself: far below the job's block
    assert elapsed < grace + 5.0, f"exit took {elapsed:.1f}s"
    print(f"SIGTERM with a {block:.0f} s decode running: exit after {elapsed:.2f} s (grace {grace} s)")


# ------------------------------------------------------------------ 5. get_status flood vs TCP


async def test_a_get_status_flood_costs_a_few_status_builds_and_tcp_pings_are_answered():
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from daemon.wire.client import AsyncDaemonClient

    async with running_daemon(daemon_config(**{"daemon.status_interval": 3600})) as server:
        builds = {"full": 0}
        provider = server.ws._status_provider

        def counting(*, full: bool):
            builds["full"] += full
            return provider(full=full)

        server.ws._status_provider = counting
        uri = f"ws://{server.ready.host}:{server.ready.ws_port}"
        async with (
            connect(uri) as flooder,
            AsyncDaemonClient(server.ready.host, server.ready.port, shared_memory=False) as bystander,
        ):
            await flooder.recv()  # the status on connect
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def flood() -> int:
                sent = 0
                with contextlib.suppress(ConnectionClosed):
                    for _ in range(100_000):
                        await flooder.send('{"type":"get_status"}')
                        sent += 1
                    await flooder.recv()
                return sent

            flooding = asyncio.ensure_future(flood())
            pings = 0
            while not flooding.done():
                assert await bystander.ping() > 0
                pings += 1
            sent = await flooding
            elapsed = loop.time() - started
        assert pings > 0 and sent > 200
        assert flooder.close_code == 1008  # the flood closed the flooder, nobody else
        # at most one full status per 0.25 s interval (+ the reply at its end), never one each
        assert builds["full"] <= elapsed / 0.25 + 3, (builds, elapsed)
        assert await bystander.ping() > 0


# ------------------------------------------------------------------ neighbours: answer size


async def test_a_small_latent_batch_that_would_decode_to_gigabytes_is_bad_request():
    from daemon.wire.client import AsyncDaemonClient, DaemonError

    async with running_daemon(daemon_config()) as server:
        address = (server.ready.host, server.ready.port)
        async with (
            AsyncDaemonClient(*address, shared_memory=False) as attacker,
            AsyncDaemonClient(*address, shared_memory=False) as bystander,
        ):
            latent = np.zeros((22, 4, 256, 256), np.float32)  # 23 MB in, 1.1 G values out
            with pytest.raises(DaemonError) as refused:
                await attacker.vae_decode(latent)
            assert (
                refused.value.code is ErrorCode.BAD_REQUEST
                and "one answer may carry" in refused.value.message
            )
            assert await bystander.ping() > 0
            with pytest.raises(DaemonError) as not_loaded:  # a fitting batch gets past the check
                await attacker.vae_decode(latent[:2])
            assert not_loaded.value.code is ErrorCode.NOT_LOADED


async def test_tokenizing_runs_on_a_clip_pool_thread_never_on_the_event_loop(tmp_path, monkeypatch):
    import threading

    from daemon.models.tokenizer import ClipTokenizer
    from daemon.wire.client import AsyncDaemonClient
    from tests.helpers.daemon_fixtures import tiny_clip_files

    threads: list[str] = []
    real_encode = ClipTokenizer.encode

    def recording_encode(self, text):
        threads.append(threading.current_thread().name)
        return real_encode(self, text)

    monkeypatch.setattr(ClipTokenizer, "encode", recording_encode)
    files = tiny_clip_files(tmp_path)
    async with running_daemon(daemon_config(**{"models.default.clip_l": str(files["clip_l"])})) as server:
        async with AsyncDaemonClient(server.ready.host, server.ready.port, shared_memory=False) as client:
            await client.clip_encode("a (lighthouse:1.2) at dusk")
    assert threads and all(name.startswith("luna-clip-") for name in threads), threads
    assert threading.main_thread().name not in threads
