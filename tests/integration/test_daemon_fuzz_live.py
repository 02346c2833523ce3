"""The real daemon (no models, port 0) under fuzzed frames from hypothesis.

Each example sends one fuzzed frame and a ping on the same connection: the fuzzed frame must get
exactly one typed answer (never a closed connection, never silence), the ping must follow, and
a bystander connection's ping is answered too, so one client's garbage never stalls another.
The daemon runs on its own event loop in a thread, shared by every example of the module.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings

from daemon.wire.protocol import (
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    Request,
    Response,
    encode_request,
    frame_bytes,
)
from tests.helpers.daemon_fixtures import daemon_config, running_daemon
from tests.helpers.fuzz_frames import frame, headers, payload_lengths

pytestmark = pytest.mark.integration

LIVE_EXAMPLES = 250  # README "Robustness" quotes this figure
PING_ID = 2**52


class BlockingConnection:
    """A plain socket speaking the protocol (the fuzzer's side; one per role)."""

    def __init__(self, address: tuple[str, int]):
        self.sock = socket.create_connection(address, timeout=10)
        self.decoder = FrameDecoder(Limits(max_payload_bytes=1 << 31))
        self.ready: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, request_id: int, others: int = 0) -> list:
        """Answers until the one for ``request_id`` and ``others`` more have come (answers to
        pipelined requests come in any order)."""
        seen = []
        while True:
            while self.ready:
                seen.append(self.ready.pop(0))
            if any(m.id == request_id for m in seen) and len(seen) >= others + 1:
                return seen
            data = self.sock.recv(1 << 20)
            assert data, f"connection closed; answers so far: {seen}"
            self.ready += self.decoder.feed(data)

    def ping(self, request_id: int) -> None:
        self.send(frame_bytes(encode_request(Request(request_id, "ping"))))
        (answer,) = self.until(request_id)
        assert isinstance(answer, Response) and answer.result["pong"] is True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def live_daemon():
    """(host, port) of a real daemon running on its own loop in a thread."""
    started = threading.Event()
    holder: dict = {}

    async def serve() -> None:
        holder["stop"] = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        async with running_daemon(daemon_config()) as server:
            holder["address"] = (server.ready.host, server.ready.port)
            holder["tcp"] = server.tcp
            started.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fuzzed-daemon")
    thread.start()
    assert started.wait(60), "daemon did not start"
    try:
        yield holder
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


@pytest.fixture(scope="module")
def connections(live_daemon):
    fuzzer = BlockingConnection(live_daemon["address"])
    bystander = BlockingConnection(live_daemon["address"])
    yield fuzzer, bystander
    fuzzer.close()
    bystander.close()


@settings(
    max_examples=LIVE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(header=headers, payload_len=payload_lengths)
def test_fuzzed_frames_get_typed_answers_and_never_stall_another_client(connections, header, payload_len):
    fuzzer, bystander = connections
    fuzzer.send(frame(header, payload_len) + frame_bytes(encode_request(Request(PING_ID, "ping"))))
    answers = fuzzer.until(PING_ID, others=1)
    (pong,) = [m for m in answers if m.id == PING_ID]
    assert isinstance(pong, Response) and pong.result["pong"] is True
    about_fuzz = [m for m in answers if m.id != PING_ID]
    assert len(about_fuzz) == 1, about_fuzz  # exactly one answer, never silence
    (answer,) = about_fuzz
    request_id = header["id"]
    expected_id = request_id if type(request_id) is int and 0 <= request_id < 2**53 else 0
    assert answer.id == expected_id
    assert isinstance(answer, (Response, ErrorResponse))
    if isinstance(answer, ErrorResponse):
        assert answer.code is not ErrorCode.INTERNAL, answer  # a bad input is never a daemon bug
        assert answer.message
    bystander.ping(7)


def test_the_fuzzed_daemon_still_serves_a_fresh_client_and_kept_every_connection(live_daemon, connections):
    fresh = BlockingConnection(live_daemon["address"])
    try:
        fresh.ping(1)
        fresh.send(frame_bytes(encode_request(Request(2, "status"))))
        (status,) = fresh.until(2)
        assert status.result["status"] == "ok"
    finally:
        fresh.close()
    assert live_daemon["tcp"].stats.snapshot()["connections_open"] >= 2
