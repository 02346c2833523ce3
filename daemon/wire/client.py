"""Clients for the Luna daemon's TCP protocol (v1) plus the health checks Luna Narrates uses
(a socket ping and the status WebSocket).

* :class:`DaemonClient` - blocking, for ComfyUI nodes (which run in a worker thread). Thread-safe:
  one persistent connection guarded by a lock; reconnects once, transparently, when the
  connection broke and the op is idempotent.
* :class:`AsyncDaemonClient` - asyncio, for the app: one connection, requests pipelined, a reader
  task (owned by the client, cancelled by :meth:`close`) hands answers to futures by id.
* :func:`check_daemon_health` (socket ping) and :func:`check_daemon_health_ws` (status WebSocket).

Both clients are thin I/O adapters over ``session.py``'s Sans-I/O :class:`ClientSession` (one
per connection), which owns the hello, authentication, shared-memory negotiation, request ids,
answer matching and reply sizing; here only sockets, waiting, timeouts and reconnecting live.
Returned arrays are views on the answer's memory, never overwritten while held (the ownership
rule is in ``session.py``).

Arrays follow ComfyUI's conventions and are always float32 numpy arrays: IMAGE is B×H×W×C in
[0, 1], LATENT samples are B×C×H/8×W/8 (unscaled). The ComfyUI nodes wrap them with
``torch.from_numpy``. On the same host, tensors go through shared memory negotiated in ``hello``
(see ``shm.py``); anywhere else, or if that fails, through the socket, transparently.

Dependencies: stdlib + numpy only (``websockets`` is imported inside
:func:`check_daemon_health_ws`); imports within the wire package are relative so the folder can
be vendored into the ComfyUI node pack as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np

from .protocol import PROTOCOL_VERSION, ErrorCode, Limits, ProtocolError
from .session import (
    IDEMPOTENT_OPS,
    Answered,
    ClientSession,
    DaemonError,
    DaemonTimeout,
    DaemonUnavailable,
    Failed,
    OpCall,
    clip_encode_call,
    conditioning,
    shutdown_call,
    single_tensor,
    vae_decode_call,
    vae_encode_call,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19283
DEFAULT_WS_PORT = 19284
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback_host(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.")


def _wants_shm(host: str, shared_memory: bool | None) -> bool:
    return _is_loopback_host(host) if shared_memory is None else shared_memory


class _ClientBase:
    """What both clients are configured with, and the reconnect rule they share."""

    _default_name = "luna-client"

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 2.0,
        shared_memory: bool | None = None,
        client_name: str | None = None,
    ):
        self.host, self.port = host, port
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.shared_memory = shared_memory
        self.client_name = client_name or f"{self._default_name}/{os.getpid()}"
        self._init_connection_state()

    def _init_connection_state(self) -> None:
        """Each client's own connection bookkeeping (set up at the end of ``__init__``)."""
        raise NotImplementedError

    def _new_session(self) -> ClientSession:
        """The Sans-I/O session of one new connection (shared memory on loopback unless told)."""
        return ClientSession(
            client_name=self.client_name,
            token=self.token,
            shared_memory=_wants_shm(self.host, self.shared_memory),
        )

    @staticmethod
    def _retry_after_break(op: str, attempt: int, fresh: bool) -> bool:
        """Whether a broken connection earns one more try: only for an idempotent op, only once,
        and only on a connection that had worked before (a fresh one failing means the daemon is
        down or refusing, and asking again at once would not change that)."""
        return attempt == 1 and not fresh and op in IDEMPOTENT_OPS


class _Connection:
    """One blocking socket driving one :class:`ClientSession`. Not thread-safe (the client locks)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        session: ClientSession,
        timeout: float,
        connect_timeout: float,
    ):
        self.host, self.port = host, port
        self.timeout = timeout
        self.session = session
        self.sock: socket.socket | None = None
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            self.session.close()
            raise DaemonUnavailable(host, port, str(exc) or type(exc).__name__) from None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.hello = self._exchange(self.session.send_hello(), time.monotonic() + timeout).result
        except (ProtocolError, OSError) as exc:  # socket.timeout included
            self.close()
            raise DaemonUnavailable(host, port, f"no usable answer to hello: {exc}") from None
        except BaseException:
            self.close()
            raise

    @property
    def broken(self) -> bool:
        """The daemon reported an error about the connection itself and is closing it."""
        return self.session.failure is not None

    def request(
        self,
        op: str,
        options: dict,
        tensors: Sequence[np.ndarray],
        *,
        reply_bytes: int | None = None,
        wire_dtype: str | None = None,
    ) -> tuple[dict, list[np.ndarray]]:
        deadline = time.monotonic() + self.timeout
        request_id = self.session.send_request(
            op, options, tensors, reply_bytes=reply_bytes, wire_dtype=wire_dtype
        )
        answer = self._exchange(request_id, deadline)
        return answer.result, list(answer.tensors)

    def _exchange(self, request_id: int, deadline: float) -> Answered:
        assert self.sock is not None
        try:
            for buffer in self.session.data_to_send():
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                self.sock.sendall(buffer)
            event = self._receive(request_id, deadline)
        finally:
            self.session.abandon(request_id)  # no-op once answered
        if isinstance(event, Failed):
            raise event.error
        return event

    def _receive(self, request_id: int, deadline: float) -> Answered | Failed:
        session, sock = self.session, self.sock
        assert sock is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
            buffer = session.get_buffer()
            received = sock.recv_into(buffer)
            del buffer
            if received == 0:
                session.receive_eof()
                raise ConnectionResetError("the daemon closed the connection")
            session.buffer_updated(received)
            for event in session.events_received():
                if event.request_id == request_id:
                    return event

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.session.close()


class DaemonClient(_ClientBase):
    """Blocking, thread-safe client on one persistent connection (opened on first use).

    Used from any thread (ComfyUI runs nodes in worker threads); one lock serialises requests.
    Shared-memory segments it created are unlinked by :meth:`close`, and at the latest when the
    connection's session is garbage-collected or the interpreter exits.
    """

    def _init_connection_state(self) -> None:
        self._lock = threading.Lock()
        self._connection: _Connection | None = None

    # -- plumbing
    def _connect(self) -> _Connection:
        if self._connection is None:
            self._connection = _Connection(
                self.host,
                self.port,
                session=self._new_session(),
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
            )
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def hello(self) -> dict:
        """The daemon's hello answer (version, ops, limits, shm, authenticated)."""
        with self._lock:
            return self._connect().hello

    @property
    def uses_shared_memory(self) -> bool:
        with self._lock:
            return self._connect().session.uses_shared_memory

    def request(
        self,
        op: str,
        options: dict | None = None,
        tensors: Sequence[np.ndarray] = (),
        *,
        reply_bytes: int | None = None,
        wire_dtype: str | None = None,
    ) -> tuple[dict, list[np.ndarray]]:
        """Send any op and wait for its answer: ``(result, tensors)``; raises DaemonError."""
        options = dict(options or {})
        with self._lock:
            for attempt in (1, 2):
                fresh = self._connection is None
                connection = self._connect()
                try:
                    return connection.request(
                        op, options, tensors, reply_bytes=reply_bytes, wire_dtype=wire_dtype
                    )
                except DaemonError:
                    if connection.broken:
                        self._drop()
                    raise
                except TimeoutError:
                    self._drop()  # the answer may still come: this connection is out of step
                    raise DaemonTimeout(
                        f"{op} got no answer from {self.host}:{self.port} within {self.timeout}s"
                    ) from None
                except (ProtocolError, OSError) as exc:
                    self._drop()
                    if not self._retry_after_break(op, attempt, fresh):
                        raise DaemonUnavailable(self.host, self.port, str(exc)) from None
            raise AssertionError("unreachable")

    def _call(self, call: OpCall) -> tuple[dict, list[np.ndarray]]:
        return self.request(call.op, call.options, call.tensors, reply_bytes=call.reply_bytes)

    # -- ops
    def ping(self) -> float:
        """Round-trip time of a ping, in seconds."""
        started = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - started

    def status(self) -> dict:
        return self.request("status")[0]

    def models(self) -> dict:
        return self.request("models")[0]

    def clip_encode(
        self, text: str, *, model: str = "default", clip_skip: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Conditioning for ``text``: (cond [1, 77k, D], pooled [1, P] or None)."""
        return conditioning(self._call(clip_encode_call(text, model=model, clip_skip=clip_skip))[1])

    def vae_encode(
        self, pixels: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        """IMAGE B×H×W×C in [0, 1] → latent B×C×H/8×W/8 (unscaled)."""
        return single_tensor(self._call(vae_encode_call(pixels, model=model, tile=tile))[1], "vae_encode")

    def vae_decode(
        self, latent: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        """Latent B×C×h×w (unscaled) → IMAGE B×8h×8w×3 in [0, 1]."""
        return single_tensor(self._call(vae_decode_call(latent, model=model, tile=tile))[1], "vae_decode")

    def shutdown(self) -> None:
        """Ask the daemon to stop. Needs the daemon's token (sent in hello and in the op)."""
        self._call(shutdown_call(self.token))

    def close(self) -> None:
        """Close the connection and unlink every shared-memory segment of this client."""
        with self._lock:
            self._drop()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ asyncio


class AsyncDaemonClient(_ClientBase):
    """asyncio client: one connection, pipelined requests, answers matched by id.

    Use from one event loop. The reader task is owned here and cancelled by :meth:`close`.
    A broken connection fails the requests in flight with :class:`DaemonUnavailable`; the next
    request reconnects (and an idempotent op that hit the break is retried once).
    """

    _default_name = "luna-app"

    def _init_connection_state(self) -> None:
        self.hello: dict = {}
        self._session: ClientSession | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._connect_lock = asyncio.Lock()

    @property
    def uses_shared_memory(self) -> bool:
        return self._session is not None and self._session.uses_shared_memory

    async def connect(self) -> dict:
        """Open the connection and say hello (done automatically by the first request)."""
        async with self._connect_lock:
            if self._writer is not None:
                return self.hello
            await self._disconnect()  # what is left of a connection that broke
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise DaemonUnavailable(self.host, self.port, str(exc) or type(exc).__name__) from None
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = self._new_session()
            self._session, self._reader, self._writer = session, reader, writer
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(reader, session), name="luna-client-reader"
            )
            try:
                answer = await self._exchange(session, session.send_hello(), "hello")
            except BaseException:
                await self._disconnect()
                raise
            self.hello = answer.result
            return answer.result

    async def _read_loop(self, reader: asyncio.StreamReader, session: ClientSession) -> None:
        failure: BaseException = DaemonUnavailable(self.host, self.port, "connection closed")
        try:
            while session.failure is None:
                data = await reader.read(1 << 20)
                if not data:
                    session.receive_eof()
                    break
                session.receive_data(data)
                for event in session.events_received():
                    future = self._pending.get(event.request_id)
                    if future is not None and not future.done():
                        future.set_result(event)
            if session.failure is not None:
                failure = session.failure
        except (OSError, ProtocolError) as exc:
            failure = DaemonUnavailable(self.host, self.port, str(exc))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._pending.clear()
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    async def _exchange(self, session: ClientSession, request_id: int, op: str) -> Answered:
        """Write what the session queued for ``request_id`` and await its answer."""
        writer = self._writer
        if writer is None:
            session.abandon(request_id)
            raise DaemonUnavailable(self.host, self.port, "not connected")
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            for buffer in session.data_to_send():  # no await in between: frames never interleave
                writer.write(buffer)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                event = await future
        except TimeoutError:
            raise DaemonTimeout(
                f"{op} got no answer from {self.host}:{self.port} within {self.timeout}s"
            ) from None
        except ConnectionError as exc:
            if isinstance(exc, DaemonUnavailable):
                raise
            raise DaemonUnavailable(self.host, self.port, str(exc)) from None
        finally:
            self._pending.pop(request_id, None)
            session.abandon(request_id)  # no-op once answered: the daemon may still write otherwise
        if isinstance(event, Failed):
            raise event.error
        return event

    async def _request_on_connection(
        self,
        op: str,
        options: dict,
        tensors: Sequence[np.ndarray],
        reply_bytes: int | None,
        wire_dtype: str | None,
    ) -> tuple[dict, list[np.ndarray]]:
        session = self._session
        if session is None or self._writer is None:
            raise DaemonUnavailable(self.host, self.port, "not connected")
        request_id = session.send_request(
            op, options, tensors, reply_bytes=reply_bytes, wire_dtype=wire_dtype
        )
        answer = await self._exchange(session, request_id, op)
        return answer.result, list(answer.tensors)

    async def request(
        self,
        op: str,
        options: dict | None = None,
        tensors: Sequence[np.ndarray] = (),
        *,
        reply_bytes: int | None = None,
        wire_dtype: str | None = None,
    ) -> tuple[dict, list[np.ndarray]]:
        """Send any op and await its answer: ``(result, tensors)``; raises DaemonError."""
        options = dict(options or {})
        for attempt in (1, 2):
            fresh = self._writer is None
            await self.connect()
            try:
                return await self._request_on_connection(op, options, tensors, reply_bytes, wire_dtype)
            except DaemonUnavailable:
                await self._disconnect()
                if not self._retry_after_break(op, attempt, fresh):
                    raise
        raise AssertionError("unreachable")

    async def _call(self, call: OpCall) -> tuple[dict, list[np.ndarray]]:
        return await self.request(call.op, call.options, call.tensors, reply_bytes=call.reply_bytes)

    async def ping(self) -> float:
        started = time.perf_counter()
        await self.request("ping")
        return time.perf_counter() - started

    async def status(self) -> dict:
        return (await self.request("status"))[0]

    async def models(self) -> dict:
        return (await self.request("models"))[0]

    async def clip_encode(
        self, text: str, *, model: str = "default", clip_skip: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return conditioning((await self._call(clip_encode_call(text, model=model, clip_skip=clip_skip)))[1])

    async def vae_encode(
        self, pixels: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        _, tensors = await self._call(vae_encode_call(pixels, model=model, tile=tile))
        return single_tensor(tensors, "vae_encode")

    async def vae_decode(
        self, latent: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        _, tensors = await self._call(vae_decode_call(latent, model=model, tile=tile))
        return single_tensor(tensors, "vae_decode")

    async def shutdown(self) -> None:
        """Ask the daemon to stop. Needs the daemon's token (sent in hello and in the op)."""
        await self._call(shutdown_call(self.token))

    async def _disconnect(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DaemonUnavailable(self.host, self.port, "client closed"))
        task, self._reader_task = self._reader_task, None
        writer, self._writer = self._writer, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        session, self._session = self._session, None
        if session is not None:
            session.close()

    async def close(self) -> None:
        """Cancel the reader task, close the socket, unlink our shared memory."""
        await self._disconnect()

    async def __aenter__(self) -> AsyncDaemonClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# ------------------------------------------------------------------------------ health checks


def check_daemon_health(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 2.0) -> bool:
    """True when a daemon answers a ping on (host, port) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    session = ClientSession(client_name="luna-health", limits=Limits(max_payload_bytes=1 << 20))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            ping = session.send_request("ping")
            sock.sendall(b"".join(session.data_to_send()))
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    return False
                session.receive_data(data)
                for event in session.events_received():
                    return isinstance(event, Answered) and event.request_id == ping
    except (OSError, ProtocolError):
        return False
    finally:
        session.close()


async def check_daemon_health_ws(
    host: str = DEFAULT_HOST, port: int = DEFAULT_WS_PORT, timeout: float = 2.0
) -> dict:
    """The daemon's status data from its WebSocket, or ``{"status": "offline"}``."""
    try:
        from websockets.asyncio.client import connect
    except ImportError:  # websockets < 13 or missing: report honestly instead of crashing
        return {"status": "offline", "error": "the websockets package is not installed"}
    try:
        async with asyncio.timeout(timeout):
            async with connect(f"ws://{host}:{port}", open_timeout=timeout, max_size=4 << 20) as websocket:
                while True:
                    message = json.loads(await websocket.recv())
                    if isinstance(message, dict) and message.get("type") == "status":
                        data = message.get("data")
                        return data if isinstance(data, dict) else {"status": "offline"}
    except Exception:  # refused, timed out, not a WebSocket, bad JSON: all mean "offline"
        return {"status": "offline"}


__all__ = [
    "PROTOCOL_VERSION",
    "AsyncDaemonClient",
    "DaemonClient",
    "DaemonError",
    "DaemonTimeout",
    "DaemonUnavailable",
    "ErrorCode",
    "check_daemon_health",
    "check_daemon_health_ws",
]
