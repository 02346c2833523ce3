"""A real TcpService on port 0 with a small real numpy op handler: good traffic, bad input of
every kind (each followed by a good request that still succeeds), clients killed mid-frame,
pipelining, BUSY, timeouts, auth, binding rules, graceful close and the shared-memory path."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from daemon.tcp_service import Peer, PortInUseError, TcpService
from daemon.wire.client import AsyncDaemonClient, DaemonClient, DaemonError
from daemon.wire.protocol import (
    MAGIC,
    PREFIX,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    OpError,
    Request,
    Response,
    encode_request,
    encode_response,
    frame_bytes,
)

pytestmark = pytest.mark.integration

OPS = ("echo", "negate", "sum", "wait", "fail", "crash", "float64", "status", "shutdown")
TOKEN = "s3cret-token-for-tests-0123456789"


class NumpyOps:
    """Test op handler doing real numpy work; ``wait`` blocks until the test releases it."""

    def __init__(self):
        self.release = asyncio.Event()
        self.entered = 0
        self.entered_changed = asyncio.Event()
        self.peers: list[Peer] = []

    async def handle(self, op, options, tensors, peer):
        self.peers.append(peer)
        if op == "echo":
            return {"count": len(tensors)}, tensors
        if op == "negate":
            return {}, [np.negative(t) for t in tensors]
        if op == "sum":
            return {"sum": float(sum(float(t.sum()) for t in tensors))}, []
        if op == "wait":
            self.entered += 1
            self.entered_changed.set()
            await self.release.wait()
            return {"tag": options.get("tag")}, []
        if op == "fail":
            raise OpError(ErrorCode.NOT_LOADED, "model set 'pony' is not configured")
        if op == "crash":
            raise RuntimeError("handler bug")
        if op == "float64":
            return {}, [np.zeros(3)]
        if op == "status":
            return {"status": "ok"}, []
        if op == "shutdown":
            return {"shutting_down": True}, []
        raise OpError(ErrorCode.BAD_REQUEST, f"unexpected op {op}")

    async def wait_entered(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.entered < count:
                self.entered_changed.clear()
                await self.entered_changed.wait()


class RawConnection:
    """A hand-driven protocol connection (asyncio streams + the Sans-I/O decoder)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(Limits(max_payload_bytes=1 << 31))
        self.ready: list = []

    @classmethod
    async def open(cls, address) -> RawConnection:
        return cls(*await asyncio.open_connection(*address))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_request(self, request: Request, **kwargs) -> None:
        await self.send(frame_bytes(encode_request(request, **kwargs)))

    async def receive(self):
        async with asyncio.timeout(5):
            while not self.ready:
                data = await self.reader.read(1 << 20)
                assert data, "connection closed before an answer came"
                self.ready += self.decoder.feed(data)
        return self.ready.pop(0)

    async def call(self, request: Request, **kwargs):
        await self.send_request(request, **kwargs)
        return await self.receive()

    async def is_closed_by_server(self) -> bool:
        async with asyncio.timeout(5):
            while True:
                try:
                    data = await self.reader.read(1 << 16)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.ready += self.decoder.feed(data)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.fixture
async def start_service():
    services = []

    async def start(limits: Limits | None = None, token: str | None = None, handler=None):
        handler = handler or NumpyOps()
        service = TcpService(
            handler, host="127.0.0.1", port=0, token=token, limits=limits or Limits(read_timeout=5.0), ops=OPS
        )
        await service.start()
        services.append(service)
        return service, handler

    yield start
    for service in services:
        await service.close(grace=1.0)


@pytest.fixture
async def conn_factory():
    connections = []

    async def open_connection(service) -> RawConnection:
        connection = await RawConnection.open(service.address)
        connections.append(connection)
        return connection

    yield open_connection
    for connection in connections:
        await connection.close()


async def wait_until(predicate) -> None:
    """Yield to the loop until the server has caught up (no sleeping)."""
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0)


async def assert_good_request_succeeds(connection: RawConnection, request_id: int = 900) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    answer = await connection.call(Request(request_id, "negate", {}, (values,)))
    assert isinstance(answer, Response) and answer.id == request_id
    np.testing.assert_array_equal(answer.tensors[0], -values)


# ------------------------------------------------------------------------------- good traffic


async def test_hello_reports_version_ops_limits_and_no_shm_without_an_offer(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    answer = await connection.call(Request(1, "hello", {"versions": [1], "client": "pytest"}))
    assert isinstance(answer, Response)
    assert answer.result["version"] == 1 and answer.result["shm"] is False
    assert set(OPS) <= set(answer.result["ops"]) and "ping" in answer.result["ops"]
    assert answer.result["limits"]["max_in_flight"] == Limits().max_in_flight
    assert answer.result["authenticated"] is False and answer.result["auth_required"] is False


async def test_ping_is_answered_without_hello(start_service, conn_factory):
    service, handler = await start_service()
    answer = await (await conn_factory(service)).call(Request(3, "ping"))
    assert isinstance(answer, Response) and answer.result["pong"] is True
    assert handler.peers == []  # the transport answered, not the handler


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int32, np.int64])
async def test_real_numpy_work_round_trips_every_whitelisted_dtype(start_service, conn_factory, dtype):
    service, _ = await start_service()
    connection = await conn_factory(service)
    values = (np.arange(24) % 100).astype(dtype).reshape(2, 3, 4)
    answer = await connection.call(Request(4, "echo", {}, (values, values[0])))
    assert answer.result == {"count": 2}
    np.testing.assert_array_equal(answer.tensors[0], values)
    np.testing.assert_array_equal(answer.tensors[1], values[0])


async def test_wire_dtype_option_narrows_the_answer(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    await connection.send_request(Request(5, "echo", {"wire_dtype": "bfloat16"}, (values,)))
    answer = await connection.receive()
    np.testing.assert_allclose(answer.tensors[0], values, atol=4e-3)
    sent_back = service.stats.bytes_out
    assert sent_back < values.nbytes  # 16 bits per value on the way back


async def test_async_client_end_to_end_with_stats(start_service):
    service, _ = await start_service()
    async with AsyncDaemonClient(*service.address, shared_memory=False) as client:
        values = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
        result, (negated,) = await client.request("negate", {}, (values,))
        np.testing.assert_array_equal(negated, -values)
        assert (await client.status()) == {"status": "ok"}
        assert await client.ping() > 0
    snapshot = service.snapshot()
    assert snapshot["requests_by_op"]["negate"] == 1 and snapshot["total_requests"] >= 4
    assert snapshot["bytes_in"] > values.nbytes and snapshot["bytes_out"] > values.nbytes


# ------------------------------------------------------------------- bad input, then good


async def test_unknown_op_is_bad_request_and_the_connection_lives(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    answer = await connection.call(Request(7, "format_disk"))
    assert answer == ErrorResponse(7, ErrorCode.BAD_REQUEST, answer.message, False)
    assert "unknown op" in answer.message
    await assert_good_request_succeeds(connection)
    await connection.call(Request(8, "x" * 64))
    assert (
        service.stats.requests_by_op["(unknown)"] == 2 and "format_disk" not in service.stats.requests_by_op
    )


def header_frame(header: dict, payload: bytes = b"") -> bytes:
    body = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, len(body), len(payload)) + body + payload


@pytest.mark.parametrize(
    ("header", "payload", "code"),
    [
        ({"v": 2, "id": 8, "op": "echo"}, b"", ErrorCode.UNSUPPORTED_VERSION),
        (
            {"v": 1, "id": 8, "op": "echo", "tensors": [{"dtype": "float64", "shape": [1], "nbytes": 8}]},
            b"\0" * 8,
            ErrorCode.BAD_REQUEST,
        ),
        (
            {"v": 1, "id": 8, "op": "echo", "tensors": [{"dtype": "float32", "shape": [3], "nbytes": 8}]},
            b"\0" * 8,
            ErrorCode.BAD_REQUEST,
        ),
        (
            {"v": 1, "id": 8, "op": "echo", "tensors": [{"dtype": "float32", "shape": [2], "nbytes": 8}]},
            b"\0" * 12,
            ErrorCode.BAD_REQUEST,
        ),
        (
            {"v": 1, "id": 8, "op": "echo", "tensors": [{"dtype": "uint8", "shape": [1] * 12, "nbytes": 1}]},
            b"\0",
            ErrorCode.BAD_REQUEST,
        ),
        (
            {"v": 1, "id": 8, "op": "echo", "tensors": [{"dtype": "uint8", "shape": [1], "nbytes": 1}] * 9},
            b"\0" * 9 * 64,
            ErrorCode.TOO_LARGE,
        ),
        (
            {
                "v": 1,
                "id": 8,
                "op": "echo",
                "tensors": [
                    {
                        "dtype": "uint8",
                        "shape": [4],
                        "nbytes": 4,
                        "shm": {"segment": "lu0123456789_1", "offset": 0},
                    }
                ],
            },
            b"",
            ErrorCode.BAD_REQUEST,
        ),
        ({"v": 1, "id": 8, "ok": True, "result": {}}, b"", ErrorCode.BAD_REQUEST),
        ({"v": 1, "id": 8, "op": "echo", "options": {"wire_dtype": "float64"}}, b"", ErrorCode.BAD_REQUEST),
        ({"v": 1, "id": 8, "op": "echo", "options": {"shm_reply": "x"}}, b"", ErrorCode.BAD_REQUEST),
    ],
)
async def test_bad_headers_get_an_error_and_the_next_request_succeeds(
    start_service, conn_factory, header, payload, code
):
    service, _ = await start_service()
    connection = await conn_factory(service)
    await connection.send(header_frame(header, payload))
    answer = await connection.receive()
    assert isinstance(answer, ErrorResponse) and answer.id == 8 and answer.code is code
    await assert_good_request_succeeds(connection)


@pytest.mark.expect_log_warnings
async def test_handler_errors_become_typed_errors_and_the_connection_lives(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    failed = await connection.call(Request(10, "fail"))
    assert failed.code is ErrorCode.NOT_LOADED and "pony" in failed.message
    crashed = await connection.call(Request(11, "crash"))
    assert crashed.code is ErrorCode.INTERNAL and "handler bug" in crashed.message
    wrong_dtype = await connection.call(Request(12, "float64"))
    assert wrong_dtype.code is ErrorCode.INTERNAL and "float64" in wrong_dtype.message
    await assert_good_request_succeeds(connection)
    assert service.stats.errors_by_code["INTERNAL"] == 2


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        PREFIX.pack(MAGIC, 5, 0) + b"nope!",
        PREFIX.pack(MAGIC, 2, 0) + b"[]",
        b"\x80\x04\x95" + b"pickle" * 10,
    ],
)
async def test_garbage_closes_only_that_connection(start_service, conn_factory, junk):
    service, _ = await start_service()
    bystander = await conn_factory(service)
    await assert_good_request_succeeds(bystander, 1)
    attacker = await conn_factory(service)
    await attacker.send(junk)
    assert await attacker.is_closed_by_server()
    error = attacker.ready[0]
    assert isinstance(error, ErrorResponse) and error.id == 0 and error.code is ErrorCode.BAD_REQUEST
    await assert_good_request_succeeds(bystander, 2)
    await assert_good_request_succeeds(await conn_factory(service), 3)


async def test_random_byte_streams_never_disturb_other_clients(start_service, conn_factory):
    service, _ = await start_service()
    bystander = await conn_factory(service)
    rng = np.random.default_rng(7)
    valid = frame_bytes(encode_request(Request(1, "echo", {}, (np.ones(300, np.float32),))))
    for round_index in range(24):
        blob = rng.bytes(int(rng.integers(1, 400)))
        if round_index % 3 == 1:  # a valid frame with random bytes flipped
            mutated = bytearray(valid)
            for position in rng.integers(0, len(mutated), 4):
                mutated[position] ^= int(rng.integers(1, 256))
            blob = bytes(mutated)
        elif round_index % 3 == 2:  # a valid prefix followed by garbage
            blob = PREFIX.pack(MAGIC, len(blob), int(rng.integers(0, 64))) + blob
        fuzzer = await RawConnection.open(service.address)
        await fuzzer.send(blob)
        fuzzer.writer.write_eof()
        assert await fuzzer.is_closed_by_server()
        await fuzzer.close()
        await assert_good_request_succeeds(bystander, 100 + round_index)
    await wait_until(lambda: service.stats.connections_open == 1)


async def test_oversize_frame_is_refused_before_reading_it(start_service, conn_factory):
    service, _ = await start_service(Limits(max_payload_bytes=1 << 20))
    attacker = await conn_factory(service)
    await attacker.send(PREFIX.pack(MAGIC, 30, 1 << 40))
    assert await attacker.is_closed_by_server()
    assert attacker.ready[0].code is ErrorCode.TOO_LARGE
    await assert_good_request_succeeds(await conn_factory(service))


async def test_client_killed_mid_frame_leaves_the_service_serving(start_service, conn_factory):
    service, _ = await start_service()
    bystander = await conn_factory(service)
    data = frame_bytes(encode_request(Request(1, "echo", {}, (np.ones(100_000, np.float32),))))
    victim = await RawConnection.open(service.address)
    await victim.send(data[: len(data) // 2])
    await wait_until(lambda: service.stats.bytes_in >= len(data) // 2)
    assert service.stats.connections_open == 2
    victim.writer.transport.abort()  # RST, like a crashed ComfyUI
    await wait_until(lambda: service.stats.connections_open == 1)
    await assert_good_request_succeeds(bystander)


async def test_stalled_frame_hits_the_read_timeout(start_service, conn_factory):
    service, _ = await start_service(Limits(read_timeout=0.2))
    slow = await conn_factory(service)
    await slow.send(frame_bytes(encode_request(Request(1, "ping")))[:10])
    assert await slow.is_closed_by_server()
    assert slow.ready[0].code is ErrorCode.TIMEOUT
    await assert_good_request_succeeds(await conn_factory(service))


async def test_idle_connection_is_not_timed_out(start_service, conn_factory):
    service, handler = await start_service(Limits(read_timeout=0.05))
    idle = await conn_factory(service)
    await idle.send_request(Request(1, "wait"))
    await handler.wait_entered(1)  # the server has read the whole frame: idle from now on
    stalled = await conn_factory(service)
    await stalled.send(b"LU")  # a frame that never completes on another connection
    assert await stalled.is_closed_by_server()  # so the read timeout has certainly expired
    handler.release.set()
    assert (await idle.receive()).result == {"tag": None}
    await assert_good_request_succeeds(idle)


async def test_peer_that_never_reads_answers_is_dropped_by_the_write_timeout(start_service, conn_factory):
    service, _ = await start_service(Limits(write_timeout=0.2))
    greedy = await RawConnection.open(service.address)
    greedy.writer.transport.pause_reading()
    big = np.ones(48 << 20, dtype=np.uint8)  # far more than the socket buffers hold
    await greedy.send_request(Request(1, "echo", {}, (big,)))
    await wait_until(lambda: service.stats.connections_open == 0)
    await greedy.close()
    await assert_good_request_succeeds(await conn_factory(service))


# ------------------------------------------------------------------ pipelining and limits


async def test_pipelined_answers_are_matched_by_id_out_of_order(start_service, conn_factory):
    service, handler = await start_service()
    connection = await conn_factory(service)
    await connection.send_request(Request(1, "wait", {"tag": "slow"}))
    await connection.send_request(Request(2, "sum", {}, (np.ones(5, np.float32),)))
    await connection.send_request(Request(3, "negate", {}, (np.ones(2, np.float32),)))
    first, second = await connection.receive(), await connection.receive()
    assert {first.id, second.id} == {2, 3}
    assert (first if first.id == 2 else second).result == {"sum": 5.0}
    handler.release.set()
    last = await connection.receive()
    assert last.id == 1 and last.result == {"tag": "slow"}


async def test_too_many_in_flight_requests_get_busy_and_the_rest_complete(start_service, conn_factory):
    service, handler = await start_service(Limits(max_in_flight=2))
    connection = await conn_factory(service)
    for request_id in (1, 2, 3):
        await connection.send_request(Request(request_id, "wait"))
    busy = await connection.receive()
    assert busy == ErrorResponse(3, ErrorCode.BUSY, busy.message, True)
    handler.release.set()
    assert {(await connection.receive()).id, (await connection.receive()).id} == {1, 2}
    await assert_good_request_succeeds(connection)


async def test_duplicate_in_flight_id_is_refused(start_service, conn_factory):
    service, handler = await start_service()
    connection = await conn_factory(service)
    await connection.send_request(Request(1, "wait"))
    await handler.wait_entered(1)
    duplicate = await connection.call(Request(1, "sum"))
    assert duplicate.code is ErrorCode.BAD_REQUEST and "already in flight" in duplicate.message
    handler.release.set()
    assert isinstance(await connection.receive(), Response)


async def test_slow_handler_hits_the_request_timeout(start_service, conn_factory):
    service, _ = await start_service(Limits(request_timeout=0.1))
    connection = await conn_factory(service)
    answer = await connection.call(Request(1, "wait"))
    assert answer.code is ErrorCode.TIMEOUT and answer.retryable
    await assert_good_request_succeeds(connection)


async def test_connections_over_the_limit_are_refused_with_busy(start_service, conn_factory):
    service, _ = await start_service(Limits(max_connections=1))
    first = await conn_factory(service)
    await assert_good_request_succeeds(first)
    second = await conn_factory(service)
    assert await second.is_closed_by_server()
    assert second.ready[0].code is ErrorCode.BUSY and second.ready[0].retryable
    await assert_good_request_succeeds(first, 2)


async def test_close_lets_in_flight_finish_or_answers_shutting_down(start_service, conn_factory):
    service, handler = await start_service()
    connection = await conn_factory(service)
    await connection.send_request(Request(1, "wait"))
    await handler.wait_entered(1)
    await service.close(grace=0.05)
    answer = await connection.receive()
    assert answer.code is ErrorCode.SHUTTING_DOWN and answer.retryable
    assert await connection.is_closed_by_server()
    with pytest.raises(OSError):
        socket.create_connection(service.address, timeout=1).close()


async def test_close_waits_for_in_flight_work_within_the_grace_and_refuses_new_work(
    start_service, conn_factory
):
    service, handler = await start_service()
    connection = await conn_factory(service)
    await connection.send_request(Request(1, "wait", {"tag": "finish me"}))
    await handler.wait_entered(1)
    closing = asyncio.get_running_loop().create_task(service.close(grace=5.0))
    await wait_until(lambda: service.closing)
    late = await connection.call(Request(2, "sum"))
    assert late.code is ErrorCode.SHUTTING_DOWN and late.retryable
    handler.release.set()
    finished = await connection.receive()
    assert finished.id == 1 and finished.result == {"tag": "finish me"}
    await closing
    assert await connection.is_closed_by_server()


# ---------------------------------------------------------------------------------- auth


@pytest.mark.expect_log_warnings
async def test_token_is_required_before_any_op(start_service, conn_factory):
    service, handler = await start_service(token=TOKEN)
    connection = await conn_factory(service)
    assert (await connection.call(Request(1, "ping"))).result["pong"] is True
    refused = await connection.call(Request(2, "echo"))
    assert refused.code is ErrorCode.UNAUTHORIZED
    wrong = await connection.call(Request(3, "hello", {"token": "guess"}))
    assert wrong.code is ErrorCode.UNAUTHORIZED
    assert (await connection.call(Request(4, "shutdown"))).code is ErrorCode.UNAUTHORIZED
    hello = await connection.call(Request(5, "hello", {"token": TOKEN, "client": "node"}))
    assert hello.result["authenticated"] is True and hello.result["auth_required"] is True
    await assert_good_request_succeeds(connection)
    assert handler.peers[-1].authenticated and handler.peers[-1].client_name == "node"


@pytest.mark.expect_log_warnings
async def test_blocking_client_with_and_without_the_token(start_service):
    service, _ = await start_service(token=TOKEN)

    def use_clients():
        with DaemonClient(*service.address, token=TOKEN, shared_memory=False) as client:
            assert client.hello["authenticated"]
            client.shutdown()
        with DaemonClient(*service.address, shared_memory=False) as anonymous:
            with pytest.raises(DaemonError) as caught:
                anonymous.status()
            assert caught.value.code is ErrorCode.UNAUTHORIZED
        with pytest.raises(DaemonError) as caught:
            DaemonClient(*service.address, token="wrong", shared_memory=False).status()
        assert caught.value.code is ErrorCode.UNAUTHORIZED

    await asyncio.to_thread(use_clients)


async def test_non_loopback_bind_without_token_is_refused():
    service = TcpService(NumpyOps(), host="0.0.0.0", port=0, token=None, limits=Limits())
    with pytest.raises(ValueError, match="without a token"):
        await service.start()
    assert service.address is None


async def test_port_in_use_is_a_clear_error(start_service):
    service, _ = await start_service()
    second = TcpService(NumpyOps(), host="127.0.0.1", port=service.address[1], token=None)
    with pytest.raises(PortInUseError, match="already in use"):
        await second.start()


# --------------------------------------------------------------------------- shared memory


async def test_shared_memory_path_moves_tensors_without_the_socket(start_service):
    service, handler = await start_service()
    values = np.random.default_rng(2).random((4, 256, 256), dtype=np.float32)  # 1 MiB

    def run():
        with DaemonClient(*service.address, shared_memory=True) as client:
            assert client.uses_shared_memory
            _, (negated,) = client.request("negate", {}, (values,))
            names = client._connection.session.segment_names
            return negated, names

    negated, names = await asyncio.to_thread(run)
    np.testing.assert_array_equal(negated, -values)
    assert handler.peers[-1].shm
    stats = service.stats
    assert stats.shm_bytes_in == values.nbytes and stats.shm_bytes_out == values.nbytes
    assert stats.bytes_in < values.nbytes / 10  # headers only on the socket
    for name in names:
        assert not Path("/dev/shm", name).exists()


async def test_async_client_pipelines_over_shared_memory(start_service):
    service, _ = await start_service()
    async with AsyncDaemonClient(*service.address, shared_memory=True) as client:
        assert client.uses_shared_memory
        inputs = [np.full((64, 1024), i, dtype=np.float32) for i in range(6)]
        answers = await asyncio.gather(*(client.request("negate", {}, (x,)) for x in inputs))
    for x, (_, (negated,)) in zip(inputs, answers):
        np.testing.assert_array_equal(negated, -x)
    assert service.stats.shm_bytes_in == sum(x.nbytes for x in inputs)


async def test_shm_offer_with_a_bad_probe_falls_back_to_the_socket(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    offer = {"prefix": "lu00000000ab", "probe": {"segment": "lu00000000ab_404", "nonce": "00" * 16}}
    hello = await connection.call(Request(1, "hello", {"shm": offer}))
    assert hello.result["shm"] is False
    await assert_good_request_succeeds(connection)


async def test_response_frames_from_a_client_are_refused(start_service, conn_factory):
    service, _ = await start_service()
    connection = await conn_factory(service)
    await connection.send(frame_bytes(encode_response(Response(4, {"ok": 1}))))
    answer = await connection.receive()
    assert answer.code is ErrorCode.BAD_REQUEST and answer.id == 4
    await assert_good_request_succeeds(connection)
