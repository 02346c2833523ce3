"""Clients for the Luna daemon's TCP protocol (v1) plus the health checks Luna Narrates uses
(a socket ping and the status WebSocket).

* :class:`DaemonClient` - blocking, for ComfyUI nodes (which run in a worker thread). Thread-safe:
  one persistent connection guarded by a lock; reconnects once, transparently, when the
  connection broke and the op is idempotent.
* :class:`AsyncDaemonClient` - asyncio, for the app: one connection, requests pipelined, a reader
  task (owned by the client, cancelled by :meth:`close`) matches answers to futures by id.
* :func:`check_daemon_health` (socket ping) and :func:`check_daemon_health_ws` (status WebSocket).

Arrays follow ComfyUI's conventions and are always float32 numpy arrays: IMAGE is B×H×W×C in
[0, 1], LATENT samples are B×C×H/8×W/8 (unscaled). The ComfyUI nodes wrap them with
``torch.from_numpy``. On the same host, tensors go through shared memory negotiated in ``hello``
(see ``shm.py``); anywhere else, or if that fails, through the socket, transparently.

Dependencies: stdlib + numpy only (``websockets`` is imported inside
:func:`check_daemon_health_ws`); imports between ``client``, ``protocol`` and ``shm`` are
relative so the three files can be vendored into the ComfyUI node pack as they are.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    ProtocolError,
    Rejected,
    Request,
    Response,
    ShmRef,
    encode_request,
)
from .shm import Lease, Segment, ShmArena, probe_confirmed, probe_create, wire_nbytes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19283
DEFAULT_WS_PORT = 19284
# Safe to send twice: a retry after a broken connection cannot change the daemon's state.
IDEMPOTENT_OPS = frozenset({"hello", "ping", "status", "models", "clip_encode", "vae_encode", "vae_decode"})
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class DaemonUnavailable(ConnectionError):
    """The daemon cannot be reached (not running, wrong port, connection lost)."""

    def __init__(self, host: str, port: int, reason: str):
        super().__init__(f"Luna daemon at {host}:{port} is unavailable: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered with an error (``code`` is an :class:`ErrorCode`)."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool = False):
        super().__init__(f"{ErrorCode(code).value}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.retryable = retryable


class DaemonTimeout(DaemonError, TimeoutError):
    """No answer within the client's timeout (the connection is dropped, the op may still run)."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.TIMEOUT, message, True)


def _is_loopback_host(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.")


def _float32(array: Any, name: str, ndim: int) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _latent_reply_bytes(pixels: np.ndarray) -> int:
    batch, height, width = pixels.shape[:3]
    return batch * 16 * (height // 8 + 1) * (width // 8 + 1) * 4  # up to 16 latent channels


def _pixels_reply_bytes(latent: np.ndarray) -> int:
    batch, _, height, width = latent.shape
    return batch * (8 * height) * (8 * width) * 4 * 4  # up to 4 image channels


def _hello_options(
    client_name: str, token: str | None, probe: tuple[Segment, str] | None, prefix: str
) -> dict:
    options: dict[str, Any] = {"versions": list(SUPPORTED_VERSIONS), "client": client_name}
    if token is not None:
        options["token"] = token
    if probe is not None:
        options["shm"] = {"prefix": prefix, "probe": {"segment": probe[0].name, "nonce": probe[1]}}
    return options


def _own_arrays(tensors: Sequence[np.ndarray], lease: Lease | None) -> list[np.ndarray]:
    """Copy arrays that still live in the request's shared memory (it is reused afterwards)."""
    if lease is None:
        return list(tensors)
    region = np.frombuffer(lease.segment.buf, dtype=np.uint8)
    owned = [np.array(t, copy=True) if np.may_share_memory(t, region) else t for t in tensors]
    del region
    return owned


class _LeaseReader:
    """The decoder's shm_reader on the client: answers may only point into our own lease."""

    def __init__(self) -> None:
        self.lease: Lease | None = None

    def __call__(self, ref: ShmRef, nbytes: int) -> memoryview:
        lease = self.lease
        if lease is None or ref.segment != lease.segment.name:
            raise ValueError(f"answer refers to segment {ref.segment!r} this request did not lend")
        return lease.segment.view(ref.offset, nbytes)


class _Connection:
    """One blocking socket with its decoder and shm arena. Not thread-safe (the client locks)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        timeout: float,
        connect_timeout: float,
        shared_memory: bool | None,
        client_name: str,
    ):
        self.host, self.port = host, port
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._reader = _LeaseReader()
        self.decoder = FrameDecoder(
            Limits(max_payload_bytes=1 << 40, max_elements=1 << 40), shm_reader=self._reader
        )
        self.arena: ShmArena | None = None
        self.server_limits: dict = {}
        self.broken = False
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise DaemonUnavailable(host, port, str(exc) or type(exc).__name__) from None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            want_shm = _is_loopback_host(host) if shared_memory is None else shared_memory
            self.hello = self._hello(client_name, token, want_shm)
        except (ProtocolError, OSError) as exc:  # socket.timeout included
            self.close()
            raise DaemonUnavailable(host, port, f"no usable answer to hello: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _hello(self, client_name: str, token: str | None, want_shm: bool) -> dict:
        arena = ShmArena() if want_shm else None
        probe = probe_create(arena) if arena is not None else None
        try:
            result, _ = self.request(
                "hello", _hello_options(client_name, token, probe, arena.prefix if arena else ""), ()
            )
            if probe is not None and result.get("shm") and probe_confirmed(*probe):
                self.arena, arena = arena, None
        finally:
            if probe is not None:
                probe[0].close()
                probe[0].unlink()
            if arena is not None:
                arena.close()
        self.server_limits = result.get("limits", {})
        return result

    def request(
        self,
        op: str,
        options: dict,
        tensors: Sequence[np.ndarray],
        *,
        reply_bytes: int | None = None,
        wire_dtype: str | None = None,
    ) -> tuple[dict, list[np.ndarray]]:
        request_id = next(self._ids)
        deadline = time.monotonic() + self.timeout
        lease = None
        if self.arena is not None and (tensors or reply_bytes):
            needed = (
                wire_nbytes(tensors, wire_dtype)
                + 64
                + (reply_bytes if reply_bytes is not None else wire_nbytes(tensors))
            )
            lease = self.arena.lease(request_id, needed)
        try:
            if lease is not None:
                lease.used = wire_nbytes(tensors, wire_dtype)  # inputs go first, reply area after
                options = {**options, "shm_reply": lease.reply_area()}
                lease.used = 0
            if wire_dtype is not None:
                options = {**options, "wire_dtype": wire_dtype}
            buffers = encode_request(
                Request(request_id, op, options, tuple(tensors)),
                wire_dtype=wire_dtype,
                place=lease.place if lease else None,
            )
            self._check_size(buffers)
            for buffer in buffers:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                self.sock.sendall(buffer)
            self._reader.lease = lease
            message = self._receive(request_id, deadline)
            if isinstance(message, ErrorResponse):
                raise DaemonError(message.code, message.message, message.retryable)
            return message.result, _own_arrays(message.tensors, lease)
        finally:
            self._reader.lease = None
            if lease is not None and self.arena is not None:
                self.arena.release(request_id)

    def _check_size(self, buffers: list) -> None:
        limit = self.server_limits.get("max_payload_bytes")
        payload = sum(memoryview(b).nbytes for b in buffers)
        if isinstance(limit, int) and payload > limit + self.server_limits.get("max_header_bytes", 0):
            raise DaemonError(
                ErrorCode.TOO_LARGE, f"request of {payload} bytes is over the daemon's limit of {limit} bytes"
            )

    def _receive(self, request_id: int, deadline: float) -> Response | ErrorResponse:
        decoder = self.decoder
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
            buffer = decoder.get_buffer()
            received = self.sock.recv_into(buffer)
            del buffer
            if received == 0:
                decoder.eof()
                raise ConnectionResetError("the daemon closed the connection")
            for message in decoder.buffer_updated(received):
                if isinstance(message, Rejected):
                    raise ProtocolError(f"malformed answer from the daemon: {message.message}")
                if isinstance(message, Request):
                    raise ProtocolError("the daemon sent a request")
                if message.id == 0 and isinstance(message, ErrorResponse):
                    self.broken = True  # connection-level error: the daemon closes this socket
                    raise DaemonError(message.code, message.message, message.retryable)
                if message.id == request_id:
                    return message

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
        if self.arena is not None:
            self.arena.close()


class DaemonClient:
    """Blocking, thread-safe client on one persistent connection (opened on first use)."""

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
        self.client_name = client_name or f"luna-client/{os.getpid()}"
        self._lock = threading.Lock()
        self._connection: _Connection | None = None

    # -- plumbing
    def _connect(self) -> _Connection:
        if self._connection is None:
            self._connection = _Connection(
                self.host,
                self.port,
                token=self.token,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                shared_memory=self.shared_memory,
                client_name=self.client_name,
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
            return self._connect().arena is not None

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
                    if attempt == 2 or fresh or op not in IDEMPOTENT_OPS:
                        raise DaemonUnavailable(self.host, self.port, str(exc)) from None
            raise AssertionError("unreachable")

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
        _, tensors = self.request("clip_encode", {"text": text, "model": model, "clip_skip": clip_skip})
        return _conditioning(tensors)

    def vae_encode(
        self, pixels: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        """IMAGE B×H×W×C in [0, 1] → latent B×C×H/8×W/8 (unscaled)."""
        pixels = _float32(pixels, "pixels", 4)
        _, tensors = self.request(
            "vae_encode", {"model": model, "tile": tile}, (pixels,), reply_bytes=_latent_reply_bytes(pixels)
        )
        return _single(tensors, "vae_encode")

    def vae_decode(
        self, latent: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        """Latent B×C×h×w (unscaled) → IMAGE B×8h×8w×3 in [0, 1]."""
        latent = _float32(latent, "latent", 4)
        _, tensors = self.request(
            "vae_decode", {"model": model, "tile": tile}, (latent,), reply_bytes=_pixels_reply_bytes(latent)
        )
        return _single(tensors, "vae_decode")

    def shutdown(self) -> None:
        """Ask the daemon to stop. Needs the daemon's token (sent in hello and in the op)."""
        self.request("shutdown", _token_options(self.token))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _token_options(token: str | None) -> dict:
    # A loopback daemon may run without transport auth and still guard shutdown by token.
    return {"token": token} if token is not None else {}


def _conditioning(tensors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    if len(tensors) not in (1, 2):
        raise DaemonError(ErrorCode.INTERNAL, f"clip_encode returned {len(tensors)} tensors")
    cond = np.asarray(tensors[0], dtype=np.float32)
    pooled = np.asarray(tensors[1], dtype=np.float32) if len(tensors) == 2 else None
    return cond, pooled


def _single(tensors: list[np.ndarray], op: str) -> np.ndarray:
    if len(tensors) != 1:
        raise DaemonError(ErrorCode.INTERNAL, f"{op} returned {len(tensors)} tensors, expected 1")
    return np.asarray(tensors[0], dtype=np.float32)


# ------------------------------------------------------------------------------------ asyncio


class AsyncDaemonClient:
    """asyncio client: one connection, pipelined requests, answers matched by id.

    Use from one event loop. The reader task is owned here and cancelled by :meth:`close`.
    A broken connection fails the requests in flight with :class:`DaemonUnavailable`; the next
    request reconnects (and an idempotent op that hit the break is retried once).
    """

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
        self.client_name = client_name or f"luna-app/{os.getpid()}"
        self.hello: dict = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._leases: dict[int, Lease] = {}
        self._arena: ShmArena | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def uses_shared_memory(self) -> bool:
        return self._arena is not None

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
            self._reader, self._writer = reader, writer
            decoder = FrameDecoder(
                Limits(max_payload_bytes=1 << 40, max_elements=1 << 40), shm_reader=self._read_lease
            )
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(reader, decoder), name="luna-client-reader"
            )
            want_shm = _is_loopback_host(self.host) if self.shared_memory is None else self.shared_memory
            arena = ShmArena() if want_shm else None
            probe = probe_create(arena) if arena is not None else None
            try:
                result, _ = await self._request_on_connection(
                    "hello",
                    _hello_options(self.client_name, self.token, probe, arena.prefix if arena else ""),
                    (),
                    None,
                    None,
                )
                if probe is not None and result.get("shm") and probe_confirmed(*probe):
                    self._arena, arena = arena, None
            except BaseException:
                await self._disconnect()
                raise
            finally:
                if probe is not None:
                    probe[0].close()
                    probe[0].unlink()
                if arena is not None:
                    arena.close()
            self.hello = result
            return result

    def _read_lease(self, ref: ShmRef, nbytes: int) -> memoryview:
        for lease in self._leases.values():
            if lease.segment.name == ref.segment:
                return lease.segment.view(ref.offset, nbytes)
        raise ValueError(f"answer refers to segment {ref.segment!r} that no request lent")

    async def _read_loop(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        failure: BaseException = DaemonUnavailable(self.host, self.port, "connection closed")
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    decoder.eof()
                    break
                for message in decoder.feed(data):
                    self._deliver(message)
        except (OSError, ProtocolError) as exc:
            failure = DaemonUnavailable(self.host, self.port, str(exc))
        except DaemonError as exc:
            failure = exc
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._pending.clear()
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    def _deliver(self, message: object) -> None:
        if isinstance(message, Rejected):
            future = self._pending.pop(message.id, None)
            if future is not None and not future.done():
                future.set_exception(DaemonError(ErrorCode.INTERNAL, f"malformed answer: {message.message}"))
            return
        if isinstance(message, Request):
            raise ProtocolError("the daemon sent a request")
        assert isinstance(message, (Response, ErrorResponse))
        if message.id == 0 and isinstance(message, ErrorResponse):
            raise DaemonError(message.code, message.message, message.retryable)
        future = self._pending.pop(message.id, None)
        if future is None or future.done():
            return
        if isinstance(message, ErrorResponse):
            future.set_exception(DaemonError(message.code, message.message, message.retryable))
        else:
            lease = self._leases.get(message.id)
            future.set_result((message.result, _own_arrays(message.tensors, lease)))

    async def _request_on_connection(
        self,
        op: str,
        options: dict,
        tensors: Sequence[np.ndarray],
        reply_bytes: int | None,
        wire_dtype: str | None,
    ) -> tuple[dict, list[np.ndarray]]:
        writer = self._writer
        if writer is None:
            raise DaemonUnavailable(self.host, self.port, "not connected")
        request_id = next(self._ids)
        lease = None
        if self._arena is not None and (tensors or reply_bytes):
            needed = (
                wire_nbytes(tensors, wire_dtype)
                + 64
                + (reply_bytes if reply_bytes is not None else wire_nbytes(tensors))
            )
            lease = self._arena.lease(request_id, needed)
        if lease is not None:
            self._leases[request_id] = lease
            lease.used = wire_nbytes(tensors, wire_dtype)  # inputs go first; reply area after
            options = {**options, "shm_reply": lease.reply_area()}
            lease.used = 0
        if wire_dtype is not None:
            options = {**options, "wire_dtype": wire_dtype}
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        answered = False
        try:
            buffers = encode_request(
                Request(request_id, op, options, tuple(tensors)),
                wire_dtype=wire_dtype,
                place=lease.place if lease else None,
            )
            for buffer in buffers:  # write() calls are not interleaved with other tasks' frames
                writer.write(buffer)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                result = await future
            answered = True
            return result
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
            self._leases.pop(request_id, None)
            if lease is not None and self._arena is not None:
                if answered or future.done():
                    self._arena.release(request_id)
                else:  # the daemon may still write into it: never reuse this segment
                    self._arena.discard(request_id)

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
                if attempt == 2 or fresh or op not in IDEMPOTENT_OPS:
                    raise
        raise AssertionError("unreachable")

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
        _, tensors = await self.request("clip_encode", {"text": text, "model": model, "clip_skip": clip_skip})
        return _conditioning(tensors)

    async def vae_encode(
        self, pixels: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        pixels = _float32(pixels, "pixels", 4)
        _, tensors = await self.request(
            "vae_encode", {"model": model, "tile": tile}, (pixels,), reply_bytes=_latent_reply_bytes(pixels)
        )
        return _single(tensors, "vae_encode")

    async def vae_decode(
        self, latent: np.ndarray, *, model: str = "default", tile: bool | None = None
    ) -> np.ndarray:
        latent = _float32(latent, "latent", 4)
        _, tensors = await self.request(
            "vae_decode", {"model": model, "tile": tile}, (latent,), reply_bytes=_pixels_reply_bytes(latent)
        )
        return _single(tensors, "vae_decode")

    async def shutdown(self) -> None:
        """Ask the daemon to stop. Needs the daemon's token (sent in hello and in the op)."""
        await self.request("shutdown", _token_options(self.token))

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
        if self._arena is not None:
            self._arena.close()
            self._arena = None

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
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"".join(encode_request(Request(1, "ping"))))
            decoder = FrameDecoder(Limits(max_payload_bytes=1 << 20))
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    return False
                for message in decoder.feed(data):
                    return isinstance(message, Response) and message.id == 1
    except (OSError, ProtocolError):
        return False


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
