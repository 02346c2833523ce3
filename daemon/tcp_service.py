"""The daemon's TCP port: asyncio adapter between sockets and the Sans-I/O protocol codec.

:class:`TcpService` owns the listening socket and one task per connection (all on the daemon's
event loop). Each connection task reads straight into the :class:`~daemon.wire.protocol.FrameDecoder`
(``loop.sock_recv_into`` into the frame's payload buffer: no intermediate copies), answers
``hello`` / ``ping`` and authentication itself, resolves shared-memory tensors, and starts one
task per request so several requests are in flight on one connection (answers matched by id,
at most ``Limits.max_in_flight`` at once, more get ``BUSY``). Every other op goes to the
:class:`OpHandler` (``daemon/ops.py``), which only ever sees numpy arrays.

Low-level ``loop.sock_*`` calls are used rather than ``asyncio.start_server`` streams because
a 64 MiB tensor would be copied three more times through ``StreamReader``'s buffer, and Python
3.11's ``writelines`` joins buffers; ``sock_sendall`` sends numpy memory as it is.

Robustness: a frame must complete within ``Limits.read_timeout`` once it has started; frames,
headers, tensor counts, dims and element counts are bounded; a peer that does not drain its
answers within ``Limits.write_timeout`` is dropped. A bad or slow client gets an error or a
closed connection, and nobody else notices. Binding: loopback by default; any other address
needs a token; the port is bound exclusively (``SO_EXCLUSIVEADDRUSE`` on Windows, never
``SO_REUSEADDR`` there) and a port in use raises :class:`PortInUseError` (a port Windows reserves,
WSAEACCES: :class:`PortReservedError`). ``localhost`` is bound as ``127.0.0.1``, the address the
clients dial (Windows resolves ``localhost`` to ``::1`` first).

Closing (why it matters on Windows): with ``SO_EXCLUSIVEADDRUSE`` Windows refuses to bind the port
again while a connection accepted on it is still active, and a connection the daemon closed first
while the peer keeps its end open (an idle ComfyUI client) lingers in FIN_WAIT for minutes. So a
connection the daemon ends is closed only after the peer had ``close_drain`` seconds to close
first (it then holds the TIME_WAIT), else with ``SO_LINGER`` 0 (a reset, nothing lingers); and
the bind is retried for ``bind_retry`` seconds (an old daemon may still be exiting).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
import typing
from dataclasses import dataclass

import numpy as np

from . import __version__
from .auth import tokens_match
from .counters import RequestCounters
from .wire.protocol import (
    HANDLER_OPS,
    OP_HELLO,
    OP_PING,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    OpError,
    ProtocolError,
    Rejected,
    Request,
    Response,
    encode_error,
    encode_response,
    is_shm_prefix,
    is_shm_segment_name,
)
from .wire.shm import ReplyWriter, ShmAttachments, probe_answer

__all__ = ["Limits", "OpHandler", "Peer", "PortInUseError", "PortReservedError", "TcpService"]


@dataclass(frozen=True)
class Peer:
    """Who sent a request. ``authenticated``: presented the configured token in ``hello``."""

    address: str
    authenticated: bool
    client_name: str
    shm: bool


class OpHandler(typing.Protocol):
    """Runs the daemon's ops (``status``, ``models``, ``clip_encode``, ``vae_encode`` …)."""

    async def handle(
        self, op: str, options: dict, tensors: list[np.ndarray], peer: Peer
    ) -> tuple[dict, list[np.ndarray]]:
        """Raise OpError for expected failures; anything else becomes INTERNAL."""
        ...


def _wire_text(text: str, limit: int = 4096) -> str:
    """A message or name that came (partly) from a peer, made safe to encode and to log: lone
    surrogates (legal in JSON, not in UTF-8) are escaped, and it is cut to ``limit``."""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shm_offer_problem(offer: object) -> str | None:
    """What is malformed in a hello ``shm`` offer (PROTOCOL.md §6), or None when it is well
    formed or absent. A well-formed offer that cannot be used (other host, no /dev/shm) is not
    a problem: it just answers ``shm: false``."""
    if offer is None:
        return None
    if not isinstance(offer, dict) or not isinstance(offer.get("probe"), dict):
        return "shm must be {prefix, probe: {segment, nonce}}"
    prefix, probe = offer.get("prefix"), offer["probe"]
    if not is_shm_prefix(prefix):
        return "shm.prefix must be 'lu' followed by 10 lower-case hex digits"
    if not is_shm_segment_name(probe.get("segment"), prefix):
        return "shm.probe.segment must be '<prefix>_<hex>'"
    nonce = probe.get("nonce")
    if (
        not isinstance(nonce, str)
        or len(nonce) != 32
        or not all(c in "0123456789abcdefABCDEF" for c in nonce)
    ):
        return "shm.probe.nonce must be 32 hex digits (16 bytes)"
    return None


class PortInUseError(OSError):
    """The TCP port is taken (most likely by another daemon)."""


class PortReservedError(OSError):
    """Windows refuses the port (WSAEACCES 10013): it lies in a range reserved by Hyper-V, WSL or
    Docker (``netsh interface ipv4 show excludedportrange protocol=tcp``) or a policy blocks it."""


#: Winsock codes as CPython reports them on Windows (``OSError.winerror``, and ``errno`` too).
WSAEACCES = 10013
WSAEADDRINUSE = 10048
#: How long a bind is retried while the port is in use: on Windows an exiting daemon's connections
#: can hold the port for a moment after its process ended; on POSIX SO_REUSEADDR covers that.
BIND_RETRY_SECONDS = 5.0 if sys.platform == "win32" else 0.0
BIND_RETRY_INTERVAL = 0.25


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def listen_host(host: str) -> str:
    """The address to bind for ``host``: ``localhost`` → ``127.0.0.1``, what every client dials
    (Windows resolves ``localhost`` to ``::1`` first, and only the first address is bound)."""
    return "127.0.0.1" if host.strip().lower() == "localhost" else host


def _bind_error_code(exc: OSError) -> int | None:
    return getattr(exc, "winerror", None) or exc.errno


def _is_in_use(exc: OSError) -> bool:
    return _bind_error_code(exc) in (errno.EADDRINUSE, WSAEADDRINUSE)


def _is_reserved(exc: OSError) -> bool:
    # errno EACCES on POSIX is a privileged port: reported as it is, not as a Windows reservation.
    return _bind_error_code(exc) == WSAEACCES


def set_abortive_close(sock: socket.socket | typing.Any) -> None:
    """Make ``close()`` reset the connection (SO_LINGER on, 0 s): nothing lingers in FIN_WAIT or
    TIME_WAIT to block the next daemon's bind. Windows' ``struct linger`` is two u_short, POSIX's
    two int. Best effort: a socket already gone is fine."""
    value = struct.pack("HH", 1, 0) if sys.platform == "win32" else struct.pack("ii", 1, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)
    except OSError:
        pass


def bind_listener(
    host: str, port: int, *, make_socket: typing.Callable[..., socket.socket] = socket.socket
) -> socket.socket:
    """Bind and listen on (host, port) exclusively; raises PortInUseError if it is taken,
    PortReservedError if Windows reserves it."""
    host = listen_host(host)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = make_socket(family, kind, proto)
    try:
        if sys.platform == "win32":
            # SO_REUSEADDR on Windows lets a second process steal a bound port; forbid sharing.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            # POSIX SO_REUSEADDR only permits rebinding over TIME_WAIT, never two listeners.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if _is_in_use(exc):
                raise PortInUseError(
                    exc.errno, f"port {port} on {host} is already in use (is another Luna daemon running?)"
                ) from None
            if _is_reserved(exc):
                raise PortReservedError(
                    exc.errno,
                    f"Windows does not allow port {port} on {host} (WSAEACCES): it is in a range "
                    "reserved by Hyper-V/WSL/Docker or blocked by policy; see `netsh interface ipv4 "
                    "show excludedportrange protocol=tcp` and choose another port",
                ) from None
            raise
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def close_after_peer(sock: socket.socket, drain: float) -> bool:
    """Close ``sock`` after giving its peer up to ``drain`` seconds to close first (what it still
    sends is discarded); reset it if the peer did not. True when the peer closed first. The
    socket is closed in every case, also when this is cancelled."""
    loop = asyncio.get_running_loop()
    peer_closed = False
    try:
        if drain > 0:
            async with asyncio.timeout(drain):
                while await loop.sock_recv(sock, 65536):
                    pass
            peer_closed = True
    except (TimeoutError, OSError):
        pass
    finally:
        if not peer_closed:
            set_abortive_close(sock)
        sock.close()
    return peer_closed


async def bind_with_retry(
    host: str,
    port: int,
    *,
    retry_for: float = BIND_RETRY_SECONDS,
    interval: float = BIND_RETRY_INTERVAL,
    bind: typing.Callable[[str, int], socket.socket] = bind_listener,
) -> socket.socket:
    """:func:`bind_listener`, retried every ``interval`` s for ``retry_for`` s while the port is
    in use (never for other errors); the last PortInUseError propagates."""
    deadline = time.monotonic() + max(0.0, retry_for)
    while True:
        try:
            return bind(host, port)
        except PortInUseError:
            if port == 0 or time.monotonic() + interval > deadline:
                raise
        await asyncio.sleep(interval)


class TcpService:
    """The protocol server. Runs entirely on the event loop that calls :meth:`start`."""

    def __init__(
        self,
        handler: OpHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 19283,
        token: str | None = None,
        limits: Limits | None = None,
        logger: logging.Logger | None = None,
        ops: typing.Iterable[str] = HANDLER_OPS,
        counters: RequestCounters | None = None,
        server_name: str = f"luna-daemon/{__version__}",
        bind_retry: float = BIND_RETRY_SECONDS,
        close_drain: float = 0.5,
    ):
        self.handler = handler
        self.host = host
        self.port = port
        self.token = token or None
        self.limits = limits or Limits()
        self.log = logger or logging.getLogger("luna.daemon.tcp")
        self.ops = tuple(ops)
        self.server_name = server_name
        self.bind_retry = bind_retry
        #: seconds a peer gets to close first after the daemon's last answer (see module docstring)
        self.close_drain = close_drain
        self.stats = counters if counters is not None else RequestCounters()
        self.closing = False
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._connections: set[_Connection] = set()
        self._refused: dict[asyncio.Task, socket.socket] = {}  # refused, waiting for the peer to close
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and start accepting; returns the bound (host, port) (port 0 → a free port)."""
        host = listen_host(self.host)
        infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if not _is_loopback(infos[0][4][0]) and not self.token:
            raise ValueError(
                f"refusing to listen on non-loopback address {self.host!r} without "
                f"a token (anyone on the network could use the daemon)"
            )
        self._listener = await bind_with_retry(host, self.port, retry_for=self.bind_retry)
        bound = self._listener.getsockname()
        self.address = (bound[0], bound[1])
        self._accept_task = asyncio.get_running_loop().create_task(
            self._accept_loop(), name="luna-tcp-accept"
        )
        self.log.info(
            "protocol v%d listening on %s:%d (token %s)",
            PROTOCOL_VERSION,
            self.address[0],
            self.address[1],
            "required" if self.token else "off",
        )
        return self.address

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, address = await loop.sock_accept(self._listener)
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                self.log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{address[0]}:{address[1]}"
            if len(self._connections) >= self.limits.max_connections or self.closing:
                self.stats.connections_refused += 1
                code = ErrorCode.SHUTTING_DOWN if self.closing else ErrorCode.BUSY
                refusal = encode_error(
                    ErrorResponse(
                        0,
                        code,
                        "too many connections" if code is ErrorCode.BUSY else "daemon is stopping",
                        True,
                    )
                )[0]
                try:
                    sock.send(refusal)  # best effort, never waits
                except OSError:
                    pass
                self._close_refused(sock)
                continue
            connection = _Connection(self, sock, peer)
            self._connections.add(connection)
            self.stats.connections_open += 1
            self.stats.connections_total += 1
            connection.task = loop.create_task(connection.run(), name=f"luna-conn-{peer}")

    def _close_refused(self, sock: socket.socket) -> None:
        """Close a refused socket the way connections close (module docstring), in the
        background; beyond ``max_connections`` of them waiting, reset at once (a flood)."""
        if len(self._refused) >= self.limits.max_connections:
            set_abortive_close(sock)
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(close_after_peer(sock, self.close_drain))
        self._refused[task] = sock
        task.add_done_callback(lambda done: self._refused.pop(done, None))

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self.stats.connections_open -= 1

    def snapshot(self) -> dict:
        """Stats for the daemon status."""
        return {"address": list(self.address) if self.address else None, **self.stats.snapshot()}

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; in-flight requests get ``grace`` seconds, then SHUTTING_DOWN."""
        self.closing = True
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        pending = [task for c in self._connections for task in c.in_flight.values()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        connections = list(self._connections)
        for connection in connections:
            connection.stop()
        await asyncio.gather(*(c.task for c in connections if c.task is not None), return_exceptions=True)
        refused = dict(self._refused)
        for task in refused:
            task.cancel()  # close_after_peer still closes (resets) the socket once it has run
        await asyncio.gather(*refused, return_exceptions=True)
        # A task cancelled before it first ran never reached its clean-up: close what it held.
        for sock in refused.values():
            if sock.fileno() != -1:
                set_abortive_close(sock)
                sock.close()
        for connection in connections:
            if connection.sock.fileno() != -1:
                set_abortive_close(connection.sock)
                connection.sock.close()
            self._forget(connection)


class _FrameTimeout(Exception):
    """A started frame did not complete within ``Limits.read_timeout``."""


class _AuthTimeout(Exception):
    """A connection to a daemon with a token did not authenticate within ``Limits.auth_timeout``."""


class _Connection:
    """One client connection: reader loop + in-flight request tasks (event loop only)."""

    def __init__(self, service: TcpService, sock: socket.socket, address: str):
        self.service = service
        self.sock = sock
        self.address = address
        self.limits = service.limits
        self.log = service.log
        self.decoder = FrameDecoder(self.limits)
        self.authenticated = False
        self.client_name = ""
        self.shm: ShmAttachments | None = None
        self.in_flight: dict[int, asyncio.Task] = {}
        self.send_lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self._broken = False
        self.peer_closed = False  # the peer's EOF arrived: our close leaves nothing lingering
        self.last_send = -float("inf")  # loop time the last answer was written

    def peer(self) -> Peer:
        return Peer(self.address, self.authenticated, self.client_name, self.shm is not None)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        decoder = self.decoder
        frame_deadline: float | None = None
        # A daemon with a token gives each connection auth_timeout to authenticate, then drops it.
        auth_deadline = loop.time() + self.limits.auth_timeout if self.service.token else None
        try:
            while not self._broken:
                buffer = decoder.get_buffer()
                if decoder.in_frame:
                    if frame_deadline is None:
                        frame_deadline = loop.time() + self.limits.read_timeout
                else:
                    frame_deadline = None
                deadline = frame_deadline
                if auth_deadline is not None and not self.authenticated:
                    deadline = auth_deadline if deadline is None else min(deadline, auth_deadline)
                if deadline is None:
                    received = await loop.sock_recv_into(self.sock, buffer)
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            received = await loop.sock_recv_into(self.sock, buffer)
                    except TimeoutError:
                        if deadline == frame_deadline:
                            raise _FrameTimeout from None
                        raise _AuthTimeout from None
                del buffer
                if received == 0:
                    self.peer_closed = True
                    decoder.eof()
                    return
                self.service.stats.bytes_in += received
                for message in decoder.buffer_updated(received):
                    frame_deadline = None
                    await self._dispatch(message)
                if decoder.in_frame and frame_deadline is None:
                    frame_deadline = loop.time() + self.limits.read_timeout
        except ProtocolError as exc:
            self.log.info("closing %s: %s", self.address, exc)
            await self._send_error_and_close(ErrorResponse(0, exc.code, exc.message, False))
        except _FrameTimeout:
            self.log.info(
                "closing %s: frame not completed within %.1fs", self.address, self.limits.read_timeout
            )
            await self._send_error_and_close(
                ErrorResponse(
                    0, ErrorCode.TIMEOUT, f"frame not completed within {self.limits.read_timeout}s", False
                )
            )
        except _AuthTimeout:
            self.log.info(
                "closing %s: not authenticated within %.1fs", self.address, self.limits.auth_timeout
            )
            await self._send_error_and_close(
                ErrorResponse(
                    0,
                    ErrorCode.UNAUTHORIZED,
                    f"not authenticated within {self.limits.auth_timeout}s: send the token in hello",
                    False,
                )
            )
        except (ConnectionError, OSError) as exc:  # TimeoutError here: an answer not drained
            self.log.debug("connection %s lost: %s", self.address, exc)
        except Exception:  # a bug here must cost one connection, never the service
            self.log.exception("connection %s failed", self.address)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        tasks = list(self.in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.shm is not None:
            self.shm.close()
        try:
            await self._close_socket()
        finally:
            self.service._forget(self)

    async def _close_socket(self) -> None:
        """Close so nothing lingers (module docstring): a peer that was just answered gets
        ``close_drain`` seconds to close first; otherwise, or if it does not, reset."""
        if self.peer_closed:
            self.sock.close()
            return
        remaining = self.last_send + self.service.close_drain - asyncio.get_running_loop().time()
        self.peer_closed = await close_after_peer(self.sock, remaining)

    async def _send_error_and_close(self, error: ErrorResponse) -> None:
        self.service.stats.errors_by_code[error.code.value] += 1
        try:
            async with asyncio.timeout(1.0):
                await self._send(encode_error(error))
        except (TimeoutError, OSError):
            pass

    async def _send(self, buffers: list) -> None:
        loop = asyncio.get_running_loop()
        async with self.send_lock:
            if self._broken:
                raise ConnectionResetError("connection already failed")
            try:
                async with asyncio.timeout(self.limits.write_timeout):
                    for buffer in buffers:
                        await loop.sock_sendall(self.sock, buffer)
                        self.service.stats.bytes_out += memoryview(buffer).nbytes
                    self.last_send = loop.time()
            except BaseException:
                # A frame was cut short: the stream is unusable. Stop the reader too.
                self._broken = True
                if self.task is not None and self.task is not asyncio.current_task():
                    self.task.cancel()
                raise

    async def _send_error(
        self, request_id: int, code: ErrorCode, message: str, retryable: bool = False, op: str = "?"
    ) -> None:
        self.service.stats.errors_by_code[code.value] += 1
        await self._send(encode_error(ErrorResponse(request_id, code, _wire_text(message), retryable)))

    async def _dispatch(self, message: object) -> None:
        if isinstance(message, Rejected):
            await self._send_error(message.id, message.code, message.message)
            return
        if not isinstance(message, Request):
            await self._send_error(
                getattr(message, "id", 0), ErrorCode.BAD_REQUEST, "only requests may be sent to the daemon"
            )
            return
        op = message.op
        known = op in self.service.ops or op in (OP_HELLO, OP_PING)
        # Unknown names share one counter: a client must not grow the stats without bound.
        self.service.stats.requests_by_op[op if known else "(unknown)"] += 1
        self.service.stats.shm_bytes_in += self.decoder.take_shm_bytes()
        if op == OP_HELLO:
            await self._hello(message)
            return
        if op == OP_PING:
            await self._send(encode_response(Response(message.id, {"pong": True, "time": time.time()})))
            return
        if op not in self.service.ops:
            await self._send_error(
                message.id,
                ErrorCode.BAD_REQUEST,
                f"unknown op {op!r}; ops: {', '.join(self.service.ops)}",
                op="(unknown)",
            )
            return
        if self.service.token and not self.authenticated:
            await self._send_error(
                message.id, ErrorCode.UNAUTHORIZED, "this daemon requires a token: send it in hello", op=op
            )
            return
        if self.service.closing:
            await self._send_error(message.id, ErrorCode.SHUTTING_DOWN, "daemon is stopping", True, op)
            return
        if message.id in self.in_flight:
            await self._send_error(
                message.id, ErrorCode.BAD_REQUEST, f"request id {message.id} is already in flight", op=op
            )
            return
        if len(self.in_flight) >= self.limits.max_in_flight:
            await self._send_error(
                message.id,
                ErrorCode.BUSY,
                f"more than {self.limits.max_in_flight} requests in flight on this connection",
                True,
                op,
            )
            return
        self.in_flight[message.id] = asyncio.get_running_loop().create_task(
            self._serve(message), name=f"luna-req-{op}-{message.id}"
        )

    async def _hello(self, request: Request) -> None:
        options = request.options
        versions = options.get("versions", [PROTOCOL_VERSION])
        if not isinstance(versions, list) or not all(type(v) is int for v in versions):
            await self._send_error(
                request.id, ErrorCode.BAD_REQUEST, "versions must be a list of ints", op=OP_HELLO
            )
            return
        common = sorted(set(versions) & set(SUPPORTED_VERSIONS))
        if not common:
            await self._send_error(
                request.id,
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version: client {versions}, daemon {list(SUPPORTED_VERSIONS)}",
                op=OP_HELLO,
            )
            return
        token = options.get("token")
        if token is not None and not isinstance(token, str):
            await self._send_error(request.id, ErrorCode.BAD_REQUEST, "token must be a string", op=OP_HELLO)
            return
        if self.service.token and token is not None:
            if not tokens_match(token, self.service.token):
                self.authenticated = False
                self.log.warning("wrong token from %s", self.address)
                await self._send_error(request.id, ErrorCode.UNAUTHORIZED, "wrong token", op=OP_HELLO)
                return
            self.authenticated = True
        problem = _shm_offer_problem(options.get("shm"))
        if problem is not None:
            await self._send_error(request.id, ErrorCode.BAD_REQUEST, problem, op=OP_HELLO)
            return
        name = options.get("client", "")
        self.client_name = _wire_text(name, 100) if isinstance(name, str) else ""
        shm_ok = self._negotiate_shm(options.get("shm"))
        result = {
            "version": common[-1],
            "server": self.service.server_name,
            "ops": [OP_HELLO, OP_PING, *self.service.ops],
            "limits": self.limits.to_dict(),
            "shm": shm_ok,
            "authenticated": self.authenticated,
            "auth_required": bool(self.service.token),
        }
        await self._send(encode_response(Response(request.id, result)))

    def _negotiate_shm(self, offer: object) -> bool:
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        if not isinstance(offer, dict):
            return False
        prefix, probe = offer.get("prefix"), offer.get("probe")
        if not isinstance(prefix, str) or not isinstance(probe, dict):
            return False
        segment, nonce = probe.get("segment"), probe.get("nonce")
        if not isinstance(segment, str) or not isinstance(nonce, str):
            return False
        try:
            attachments = ShmAttachments(prefix)
        except ValueError:
            return False
        if not probe_answer(prefix, segment, nonce):
            return False
        self.shm = attachments
        self.decoder.shm_reader = attachments
        return True

    async def _serve(self, request: Request) -> None:
        try:
            await self._serve_one(request)
        finally:
            # Only now: the task stays referenced (and counted as in flight) until its answer
            # has been written, so close() and teardown can wait for or cancel it.
            self.in_flight.pop(request.id, None)

    async def _serve_one(self, request: Request) -> None:
        code: ErrorCode | None = None
        try:
            buffers = await self._run_handler(request)
        except OpError as exc:
            code = exc.code
            buffers = encode_error(
                ErrorResponse(request.id, exc.code, _wire_text(exc.message), exc.retryable)
            )
        except TimeoutError:
            code = ErrorCode.TIMEOUT
            buffers = encode_error(
                ErrorResponse(
                    request.id, code, f"{request.op} took longer than {self.limits.request_timeout}s", True
                )
            )
        except asyncio.CancelledError:
            if self.service.closing and not self._broken:
                try:
                    async with asyncio.timeout(1.0):
                        await self._send(
                            encode_error(
                                ErrorResponse(
                                    request.id,
                                    ErrorCode.SHUTTING_DOWN,
                                    "daemon stopped before finishing",
                                    True,
                                )
                            )
                        )
                except (TimeoutError, OSError, asyncio.CancelledError):
                    pass
            raise
        except Exception as exc:  # handler bug: answer INTERNAL, keep the connection
            self.log.exception("op %s failed", request.op)
            code = ErrorCode.INTERNAL
            message = _wire_text(f"{type(exc).__name__}: {exc}")
            buffers = encode_error(ErrorResponse(request.id, code, message, False))
        if code is not None:
            self.service.stats.errors_by_code[code.value] += 1
        try:
            await self._send(buffers)
        except (OSError, TimeoutError) as exc:
            self.log.info("could not answer %s on %s: %s", request.op, self.address, exc)

    async def _run_handler(self, request: Request) -> list:
        options = dict(request.options)
        wire_dtype = options.pop("wire_dtype", None)
        reply = options.pop("shm_reply", None)
        if wire_dtype not in (None, "float32", "float16", "bfloat16"):
            raise OpError(ErrorCode.BAD_REQUEST, "wire_dtype must be float32, float16 or bfloat16")
        placer = self._reply_writer(reply)
        async with asyncio.timeout(self.limits.request_timeout):
            result, tensors = await self.service.handler.handle(
                request.op, options, list(request.tensors), self.peer()
            )
        if not isinstance(result, dict):
            raise TypeError(f"handler returned {type(result).__name__} instead of a dict")
        response = Response(request.id, result, tuple(tensors))
        buffers = encode_response(response, wire_dtype=wire_dtype, place=placer)
        if placer is not None:
            self.service.stats.shm_bytes_out += placer.used - placer.start
        return buffers

    def _reply_writer(self, reply: object) -> ReplyWriter | None:
        if reply is None:
            return None
        if (
            not isinstance(reply, dict)
            or not is_shm_segment_name(reply.get("segment"))
            or type(reply.get("offset")) is not int
            or type(reply.get("capacity")) is not int
            or reply["offset"] < 0
            or reply["capacity"] < 0
        ):
            raise OpError(
                ErrorCode.BAD_REQUEST,
                "shm_reply must be {segment: '<prefix>_<hex>', offset: int >= 0, capacity: int >= 0}",
            )
        if self.shm is None:
            raise OpError(ErrorCode.BAD_REQUEST, "shm_reply needs shared memory negotiated in hello")
        try:
            segment = self.shm.segment(reply["segment"])
            return ReplyWriter(segment, reply["offset"], reply["capacity"])
        except (OSError, ValueError) as exc:
            raise OpError(ErrorCode.BAD_REQUEST, f"shm_reply unusable: {exc}") from None
