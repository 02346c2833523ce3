"""Binding and closing rules of the daemon's ports that exist for Windows.

What Linux can check here: the branches (``SO_EXCLUSIVEADDRUSE`` set on Windows, the Winsock
codes 10048/10013 mapped to their own errors, ``struct linger`` packed as Windows lays it out,
the bind retried only while the port is in use, ``localhost`` bound as 127.0.0.1) and, with real
sockets, that a connection the daemon ends is reset unless the peer closed first. What only a
real Windows box can confirm: that a daemon restarted at once binds both ports again (no
WSAEADDRINUSE from connections of the old one), and that Windows really reports a Hyper-V
excluded port as WSAEACCES.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys

import pytest

from daemon import tcp_service
from daemon.tcp_service import (
    WSAEACCES,
    WSAEADDRINUSE,
    PortInUseError,
    PortReservedError,
    TcpService,
    bind_listener,
    bind_with_retry,
    listen_host,
    set_abortive_close,
)
from daemon.wire.protocol import MAGIC


class FakeSocket:
    """Records options; ``bind`` raises the error it was given (a Winsock failure)."""

    def __init__(self, error: OSError | None = None):
        self.error = error
        self.options: list[tuple[int, int, object]] = []
        self.closed = False

    def __call__(self, *_args):  # used as the socket factory
        return self

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))

    def bind(self, _address):
        if self.error is not None:
            raise self.error

    def listen(self, _backlog):
        pass

    def setblocking(self, _flag):
        pass

    def close(self):
        self.closed = True


def winsock_error(code: int) -> OSError:
    # CPython on Windows sets errno and winerror to the WSA code; Linux has no winerror argument.
    exc = OSError(code, "winsock failure")
    exc.winerror = code
    return exc


def test_localhost_is_bound_as_the_ipv4_loopback_clients_dial():
    assert listen_host("localhost") == listen_host(" LocalHost ") == "127.0.0.1"
    assert listen_host("::1") == "::1" and listen_host("0.0.0.0") == "0.0.0.0"
    with bind_listener("localhost", 0) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"


async def test_tcp_service_on_localhost_reports_127_0_0_1():
    service = TcpService(handler=None, host="localhost", port=0)
    host, _ = await service.start()
    try:
        assert host == "127.0.0.1"
    finally:
        await service.close()


def test_windows_binds_exclusively_and_never_with_reuseaddr(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)  # Windows' value
    fake = FakeSocket()
    assert bind_listener("127.0.0.1", 0, make_socket=fake) is fake
    assert fake.options == [(socket.SOL_SOCKET, -5, 1)]


@pytest.mark.parametrize("code", [WSAEADDRINUSE, errno.EADDRINUSE])
def test_address_in_use_is_port_in_use(code):
    fake = FakeSocket(winsock_error(code))
    with pytest.raises(PortInUseError, match="port 19283 on 127.0.0.1 is already in use"):
        bind_listener("127.0.0.1", 19283, make_socket=fake)
    assert fake.closed


def test_wsaeacces_is_a_reserved_port_with_its_own_message():
    fake = FakeSocket(winsock_error(WSAEACCES))
    with pytest.raises(PortReservedError, match="excludedportrange") as caught:
        bind_listener("127.0.0.1", 19283, make_socket=fake)
    assert not isinstance(caught.value, PortInUseError) and fake.closed


def test_posix_eacces_is_not_mistaken_for_a_windows_reservation():
    fake = FakeSocket(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(OSError) as caught:
        bind_listener("127.0.0.1", 80, make_socket=fake)
    assert not isinstance(caught.value, (PortInUseError, PortReservedError))


@pytest.mark.parametrize(("platform", "expected"), [("win32", struct.pack("HH", 1, 0)), ("linux", None)])
def test_abortive_close_packs_linger_as_the_platform_lays_it_out(monkeypatch, platform, expected):
    monkeypatch.setattr(sys, "platform", platform)
    fake = FakeSocket()
    set_abortive_close(fake)
    [(level, option, value)] = fake.options
    assert (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER)
    assert value == (expected or struct.pack("ii", 1, 0))


async def test_bind_is_retried_while_the_port_is_in_use_then_succeeds():
    attempts = []
    listener = object()

    def bind(host, port):
        attempts.append((host, port))
        if len(attempts) < 3:
            raise PortInUseError(WSAEADDRINUSE, "in use")
        return listener

    assert await bind_with_retry("127.0.0.1", 19283, retry_for=5, interval=0.001, bind=bind) is listener
    assert len(attempts) == 3


async def test_bind_retry_is_bounded_and_only_for_a_port_in_use():
    attempts = []

    def in_use(host, port):
        attempts.append(port)
        raise PortInUseError(WSAEADDRINUSE, "in use")

    with pytest.raises(PortInUseError):
        await bind_with_retry("127.0.0.1", 19283, retry_for=0, bind=in_use)
    assert attempts == [19283]

    def reserved(host, port):
        attempts.append(port)
        raise PortReservedError(WSAEACCES, "reserved")

    attempts.clear()
    with pytest.raises(PortReservedError):
        await bind_with_retry("127.0.0.1", 19283, retry_for=5, interval=0.001, bind=reserved)
    assert attempts == [19283]


async def test_a_real_port_in_use_still_fails_after_the_retry_window():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError):
            await bind_with_retry("127.0.0.1", port, retry_for=0.01, interval=0.005)


# ------------------------------------------------------------------ closing with real sockets


class Ops:
    async def handle(self, op, options, tensors, peer):
        return {}, []


def _recv_until_reset_or_eof(sock: socket.socket) -> str:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


@pytest.fixture
def abortive_closes(monkeypatch):
    calls = []
    real = tcp_service.set_abortive_close

    def spy(sock):
        try:
            calls.append(sock.getpeername())
        except OSError:  # the peer already reset it
            calls.append("?")
        real(sock)

    monkeypatch.setattr(tcp_service, "set_abortive_close", spy)
    return calls


async def test_closing_the_service_resets_an_idle_connection(abortive_closes):
    service = TcpService(Ops(), port=0, close_drain=5.0)
    host, port = await service.start()
    client = socket.create_connection((host, port))
    try:
        async with asyncio.timeout(5):
            while not service._connections:  # the accept loop has taken it
                await asyncio.sleep(0)
        await service.close(grace=0)
        assert await asyncio.to_thread(_recv_until_reset_or_eof, client) == "reset"
        assert abortive_closes == [client.getsockname()]
    finally:
        client.close()


async def test_a_peer_that_closes_after_its_answer_is_not_reset(abortive_closes):
    from daemon.wire.client import AsyncDaemonClient

    service = TcpService(Ops(), port=0, close_drain=30.0)
    host, port = await service.start()
    client = AsyncDaemonClient(host, port, shared_memory=False)
    await client.connect()
    await client.ping()  # an answer was just sent: the daemon waits for the peer to close first
    closing = asyncio.create_task(service.close(grace=0))
    await client.close()
    await asyncio.wait_for(closing, 10)  # far sooner than close_drain: the peer's EOF ended it
    assert abortive_closes == []


async def test_after_a_framing_error_a_peer_that_stays_is_reset_after_the_drain(abortive_closes):
    service = TcpService(Ops(), port=0, close_drain=0.05)
    host, port = await service.start()
    client = socket.create_connection((host, port))
    try:
        client.sendall(b"NOPE" + bytes(12))
        first = await asyncio.to_thread(client.recv, 4)
        assert first == MAGIC  # the error frame arrived before the reset
        assert await asyncio.to_thread(_recv_until_reset_or_eof, client) == "reset"
    finally:
        client.close()
        await service.close()


def _read_frame_start(sock: socket.socket) -> bytes:
    """Read one whole frame (so closing afterwards leaves no unread data, which would reset);
    returns its magic."""
    data = b""
    while len(data) < 16:
        data += sock.recv(16 - len(data))
    magic, header_len, payload_len = struct.unpack(">4sIQ", data)
    remaining = header_len + payload_len
    while remaining:
        remaining -= len(sock.recv(remaining))
    return magic


async def test_a_refused_peer_that_reads_busy_and_closes_is_not_reset(abortive_closes):
    from daemon.wire.protocol import Limits

    service = TcpService(Ops(), port=0, limits=Limits(max_connections=1), close_drain=30.0)
    host, port = await service.start()
    first = socket.create_connection((host, port))
    try:
        async with asyncio.timeout(5):
            while not service._connections:
                await asyncio.sleep(0)
        refused = socket.create_connection((host, port))
        assert await asyncio.to_thread(_read_frame_start, refused) == MAGIC  # BUSY, id 0
        refused.close()
        # The refusal's close task exists since before BUSY was sent; it ends on the peer's EOF,
        # far sooner than close_drain (30 s).
        assert service.stats.connections_refused == 1 and service._refused
        async with asyncio.timeout(10):
            await asyncio.gather(*list(service._refused))
        assert abortive_closes == []
    finally:
        first.close()
        await service.close()


async def test_a_refused_peer_that_stays_is_reset_after_the_drain(abortive_closes):
    from daemon.wire.protocol import Limits

    service = TcpService(Ops(), port=0, limits=Limits(max_connections=1), close_drain=0.05)
    host, port = await service.start()
    first = socket.create_connection((host, port))
    refused = None
    try:
        async with asyncio.timeout(5):
            while not service._connections:
                await asyncio.sleep(0)
        refused = socket.create_connection((host, port))
        assert await asyncio.to_thread(_read_frame_start, refused) == MAGIC
        assert await asyncio.to_thread(_recv_until_reset_or_eof, refused) == "reset"
    finally:
        first.close()
        if refused is not None:
            refused.close()
        await service.close()


async def test_a_connection_whose_task_never_ran_is_closed_and_forgotten_on_close():
    service = TcpService(Ops(), port=0)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        connection = tcp_service._Connection(service, ours, "peer")
        service._connections.add(connection)
        service.stats.connections_open += 1
        connection.task = asyncio.get_running_loop().create_task(connection.run())
        await service.close()  # cancels the task before it first ran
        assert connection.task.cancelled() and ours.fileno() == -1
        assert service.stats.connections_open == 0 and not service._connections
    finally:
        ours.close()
        theirs.close()


async def test_a_refused_socket_whose_task_never_ran_is_closed_on_close():
    service = TcpService(Ops(), port=0)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        service._close_refused(ours)
        [task] = service._refused
        await service.close()  # no connections: nothing yields before the refusal is cancelled
        assert task.cancelled() and ours.fileno() == -1
    finally:
        ours.close()
        theirs.close()
