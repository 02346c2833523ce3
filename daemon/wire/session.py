"""Sans-I/O client session of the Luna daemon protocol: what both clients do, without any I/O.

:class:`ClientSession` owns the client side of one connection as plain state: the ``hello``
(protocol versions, client name, token, the shared-memory offer and its probe), request ids,
the shared-memory arena and each request's lease (big input tensors placed in the segment, the
rest of it announced as ``shm_reply``, sized for the expected answer), matching answers to
requests, and the size check against the daemon's limits. Bytes come in through
:meth:`~ClientSession.receive_data` (or the zero-copy pair :meth:`~ClientSession.get_buffer` /
:meth:`~ClientSession.buffer_updated`) and come out as typed events
(:meth:`~ClientSession.events_received`: :class:`Answered`, :class:`Failed`); frames to send
come out of :meth:`~ClientSession.data_to_send` as buffers. It never touches a socket, a
thread, a clock or an event loop: ``client.py``'s :class:`DaemonClient` (blocking) and
:class:`AsyncDaemonClient` (asyncio) are thin adapters that move the bytes and wait, as the
``websockets`` library's I/O layers are over its Sans-I/O protocol objects. Timeouts belong to
the adapters: they call :meth:`~ClientSession.abandon` for a request they stop waiting for.

Ownership of answer arrays: tensors that came through the socket are views on the decoder's
payload buffer, and tensors that came through shared memory are views on the request's
segment; neither is copied. The decoder and the arena write over that memory again only once
no array made from the answer is alive any more (weak references, see ``protocol.py``'s
``FrameDecoder`` and ``shm.py``'s ``Lease``), so an array a caller holds stays valid and
unchanged for as long as it is held, and is writable.

Shared-memory clean-up: :meth:`~ClientSession.close` unlinks every segment the session created
(idle, leased, or still viewed by answer arrays, whose memory stays valid), and a
``weakref.finalize`` does the same when the session is garbage-collected or the interpreter
exits, so a process that exits normally leaves nothing for the resource tracker to report.

Not thread-safe: one session per connection, driven by its adapter only (under the blocking
client's lock, or on one event loop). Stdlib + numpy only; vendored with the wire package.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import (
    SUPPORTED_VERSIONS,
    TENSOR_ALIGNMENT,
    Decoded,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    ProtocolError,
    Rejected,
    Request,
    ShmRef,
    encode_request,
)
from .shm import Lease, Segment, ShmArena, probe_confirmed, probe_create, wire_nbytes

# Safe to send twice: a retry after a broken connection cannot change the daemon's state.
IDEMPOTENT_OPS = frozenset({"hello", "ping", "status", "models", "clip_encode", "vae_encode", "vae_decode"})
# Answers are bounded by what the client asked for, not by the daemon's request limits.
ANSWER_LIMITS = Limits(max_payload_bytes=1 << 40, max_elements=1 << 40)


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


@dataclass(frozen=True)
class Answered:
    """The daemon answered request ``request_id``: its result and tensors (float32 arrays)."""

    request_id: int
    result: dict
    tensors: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Failed:
    """Request ``request_id`` failed: the daemon's error answer, an answer that could not be
    decoded (INTERNAL), or an error about the whole connection (:attr:`ClientSession.failure`)."""

    request_id: int
    error: DaemonError


SessionEvent = Answered | Failed


# ------------------------------------------------------------------------------ op calls


@dataclass(frozen=True)
class OpCall:
    """One op as both clients send it: options, input tensors and the reply capacity to lend."""

    op: str
    options: dict
    tensors: tuple[np.ndarray, ...] = ()
    reply_bytes: int | None = None  # shared memory to reserve for the answer's tensors


def _float32(array: Any, name: str, ndim: int) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def latent_reply_bytes(pixels: np.ndarray) -> int:
    """Room for the latent of B×H×W×C pixels (up to 16 latent channels)."""
    batch, height, width = pixels.shape[:3]
    return batch * 16 * (height // 8 + 1) * (width // 8 + 1) * 4


def pixels_reply_bytes(latent: np.ndarray) -> int:
    """Room for the image decoded from a B×C×h×w latent (up to 4 image channels)."""
    batch, _, height, width = latent.shape
    return batch * (8 * height) * (8 * width) * 4 * 4


def clip_encode_call(text: str, *, model: str, clip_skip: int | None) -> OpCall:
    return OpCall("clip_encode", {"text": text, "model": model, "clip_skip": clip_skip})


def vae_encode_call(pixels: Any, *, model: str, tile: bool | None) -> OpCall:
    """IMAGE B×H×W×C in [0, 1] (converted to float32 C order; ValueError unless 4-D)."""
    array = _float32(pixels, "pixels", 4)
    return OpCall("vae_encode", {"model": model, "tile": tile}, (array,), latent_reply_bytes(array))


def vae_decode_call(latent: Any, *, model: str, tile: bool | None) -> OpCall:
    """Latent B×C×h×w, unscaled (converted to float32 C order; ValueError unless 4-D)."""
    array = _float32(latent, "latent", 4)
    return OpCall("vae_decode", {"model": model, "tile": tile}, (array,), pixels_reply_bytes(array))


def shutdown_call(token: str | None) -> OpCall:
    # A loopback daemon may run without transport auth and still guard shutdown by token.
    return OpCall("shutdown", {"token": token} if token is not None else {})


def conditioning(tensors: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """``clip_encode``'s tensors → (cond [1, 77k, D], pooled [1, P] or None)."""
    if len(tensors) not in (1, 2):
        raise DaemonError(ErrorCode.INTERNAL, f"clip_encode returned {len(tensors)} tensors")
    cond = np.asarray(tensors[0], dtype=np.float32)
    pooled = np.asarray(tensors[1], dtype=np.float32) if len(tensors) == 2 else None
    return cond, pooled


def single_tensor(tensors: Sequence[np.ndarray], op: str) -> np.ndarray:
    """The one tensor of a VAE op's answer."""
    if len(tensors) != 1:
        raise DaemonError(ErrorCode.INTERNAL, f"{op} returned {len(tensors)} tensors, expected 1")
    return np.asarray(tensors[0], dtype=np.float32)


# ------------------------------------------------------------------------------ session


def _clean_up(arena: ShmArena, probe: Segment | None) -> None:
    # The finalizer's callback: must not reference the session (weakref.finalize's rule).
    if probe is not None:
        probe.close()
        probe.unlink()
    arena.close()


class ClientSession:
    """The client side of one daemon connection, Sans-I/O (see the module docstring)."""

    def __init__(
        self,
        *,
        client_name: str,
        token: str | None = None,
        shared_memory: bool = False,
        limits: Limits = ANSWER_LIMITS,
    ):
        self.client_name = client_name
        self.token = token
        self._want_shm = shared_memory
        self._ids = itertools.count(1)
        self._decoder = FrameDecoder(limits, shm_reader=self._read_shm)
        self._outgoing: list[Any] = []
        self._events: list[SessionEvent] = []
        self._in_flight: dict[int, Lease | None] = {}
        self._by_segment: dict[str, Lease] = {}
        self._arena: ShmArena | None = None
        self._probe: tuple[Segment, str] | None = None
        self._finalizer: weakref.finalize | None = None
        self._shm_ready = False
        self._hello_id: int | None = None
        self.hello: dict | None = None  # the daemon's hello result, once it answered
        self.server_limits: dict = {}
        self.failure: DaemonError | None = None  # an error about the connection (id 0)
        self.closed = False

    # -- state
    @property
    def uses_shared_memory(self) -> bool:
        """True once the daemon proved in hello that it maps our memory read-write."""
        return self._shm_ready

    @property
    def in_flight(self) -> frozenset[int]:
        """Ids of the requests sent and neither answered nor abandoned."""
        return frozenset(self._in_flight)

    @property
    def segment_names(self) -> list[str]:
        """Names of every shared-memory segment this session owns now (idle, leased, retired)."""
        return self._arena.segment_names if self._arena is not None else []

    @property
    def shm_prefix(self) -> str | None:
        """The name prefix of this session's shared-memory segments (None: no shared memory)."""
        return self._arena.prefix if self._arena is not None else None

    # -- sending
    def send_hello(self) -> int:
        """Queue the ``hello`` request (with a shared-memory offer if wanted); returns its id."""
        if self._want_shm and self._arena is None:
            arena = ShmArena()
            probe = probe_create(arena)
            if probe is None:
                arena.close()  # no usable shared memory here: the socket carries everything
            else:
                self._arena, self._probe = arena, probe
                self._finalizer = weakref.finalize(self, _clean_up, arena, probe[0])
        options: dict[str, Any] = {"versions": list(SUPPORTED_VERSIONS), "client": self.client_name}
        if self.token is not None:
            options["token"] = self.token
        if self._arena is not None and self._probe is not None:
            segment, nonce = self._probe
            options["shm"] = {
                "prefix": self._arena.prefix,
                "probe": {"segment": segment.name, "nonce": nonce},
            }
        self._hello_id = self.send_request("hello", options)
        return self._hello_id

    def send(self, call: OpCall, *, wire_dtype: str | None = None) -> int:
        """Queue an :class:`OpCall`; returns its request id."""
        return self.send_request(
            call.op, call.options, call.tensors, reply_bytes=call.reply_bytes, wire_dtype=wire_dtype
        )

    def send_request(
        self,
        op: str,
        options: dict | None = None,
        tensors: Sequence[np.ndarray] = (),
        *,
        reply_bytes: int | None = None,
        wire_dtype: str | None = None,
    ) -> int:
        """Queue one request; returns its id. Raises DaemonError(TOO_LARGE) for a request over
        the daemon's limits, ValueError/TypeError for one that cannot be encoded."""
        if self.closed:
            raise RuntimeError("the session is closed")
        request_id = next(self._ids)
        options = dict(options or {})
        lease = None
        if self._shm_ready and self._arena is not None and (tensors or reply_bytes):
            inputs = wire_nbytes(tensors, wire_dtype)
            replies = reply_bytes if reply_bytes is not None else wire_nbytes(tensors)
            lease = self._arena.lease(request_id, inputs + TENSOR_ALIGNMENT + replies)
        try:
            if lease is not None:
                lease.used = wire_nbytes(tensors, wire_dtype)  # inputs go first, the reply area after
                options["shm_reply"] = lease.reply_area()
                lease.used = 0
            if wire_dtype is not None:
                options["wire_dtype"] = wire_dtype
            buffers = encode_request(
                Request(request_id, op, options, tuple(tensors)),
                wire_dtype=wire_dtype,
                place=lease.place if lease is not None else None,
            )
            self._check_size(buffers)
        except BaseException:
            if lease is not None and self._arena is not None:
                self._arena.release(request_id)  # nothing was sent: the segment is free again
            raise
        self._in_flight[request_id] = lease
        if lease is not None:
            self._by_segment[lease.segment.name] = lease
        self._outgoing.extend(buffers)
        return request_id

    def data_to_send(self) -> list[Any]:
        """The buffers queued so far, in order (send each whole; tensor memory is not copied)."""
        out, self._outgoing = self._outgoing, []
        return out

    def _check_size(self, buffers: list[Any]) -> None:
        limit = self.server_limits.get("max_payload_bytes")
        total = sum(memoryview(b).nbytes for b in buffers)
        if isinstance(limit, int) and total > limit + self.server_limits.get("max_header_bytes", 0):
            raise DaemonError(
                ErrorCode.TOO_LARGE, f"request of {total} bytes is over the daemon's limit of {limit} bytes"
            )

    # -- receiving
    def get_buffer(self) -> memoryview:
        """A writable buffer to receive into (``recv_into``); then call :meth:`buffer_updated`."""
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last :meth:`get_buffer`. Raises ProtocolError."""
        self._handle(self._decoder.buffer_updated(nbytes))

    def receive_data(self, data: Any) -> None:
        """Bytes received from the daemon. Raises ProtocolError when the stream is unusable."""
        self._handle(self._decoder.feed(data))

    def receive_eof(self) -> None:
        """The daemon closed the connection; raises ProtocolError if it cut a frame short."""
        self._decoder.eof()

    def events_received(self) -> list[SessionEvent]:
        """The answers and failures completed since the last call, in arrival order."""
        out, self._events = self._events, []
        return out

    def _read_shm(self, ref: ShmRef, nbytes: int) -> memoryview:
        # The decoder's shm_reader: answers may only point into segments lent to requests in flight.
        lease = self._by_segment.get(ref.segment)
        if lease is None:
            raise ValueError(f"answer refers to segment {ref.segment!r} that no request in flight lent")
        return lease.answer_view(ref.offset, nbytes)

    def _handle(self, messages: list[Decoded]) -> None:
        for message in messages:
            if isinstance(message, Request):
                raise ProtocolError("the daemon sent a request")
            if isinstance(message, ErrorResponse) and message.id == 0:
                # About the connection, not one request: the daemon closes it now.
                self.failure = DaemonError(message.code, message.message, message.retryable)
                for request_id in list(self._in_flight):
                    self._complete(Failed(request_id, self.failure))
                continue
            if message.id not in self._in_flight:
                if isinstance(message, Rejected) and message.id == 0:
                    raise ProtocolError(f"malformed answer from the daemon: {message.message}")
                continue  # an answer to a request we stopped waiting for
            if isinstance(message, Rejected):
                event: SessionEvent = Failed(
                    message.id,
                    DaemonError(ErrorCode.INTERNAL, f"malformed answer from the daemon: {message.message}"),
                )
            elif isinstance(message, ErrorResponse):
                event = Failed(message.id, DaemonError(message.code, message.message, message.retryable))
            else:
                event = Answered(message.id, message.result, message.tensors)
            if message.id == self._hello_id:
                self._hello_answered(event)
            self._complete(event)

    def _complete(self, event: SessionEvent) -> None:
        lease = self._in_flight.pop(event.request_id, None)
        if lease is not None:
            self._by_segment.pop(lease.segment.name, None)
            if self._arena is not None:
                self._arena.release(event.request_id)  # retired while the answer's arrays live
        self._events.append(event)

    def _hello_answered(self, event: SessionEvent) -> None:
        self._hello_id = None
        probe, self._probe = self._probe, None
        try:
            if isinstance(event, Answered):
                self.hello = event.result
                limits = event.result.get("limits")
                self.server_limits = limits if isinstance(limits, dict) else {}
                if probe is not None and event.result.get("shm") and probe_confirmed(*probe):
                    self._shm_ready = True
        finally:
            if probe is not None:
                probe[0].close()
                probe[0].unlink()
            if not self._shm_ready:
                self._drop_arena()

    # -- ending
    def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` (timeout, cancel): its segment is unlinked, never
        reused, since the daemon may still write into it. No-op once it was answered."""
        if request_id not in self._in_flight:
            return
        lease = self._in_flight.pop(request_id)
        if lease is not None:
            self._by_segment.pop(lease.segment.name, None)
            if self._arena is not None:
                self._arena.discard(request_id)

    def _drop_arena(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs once: unlinks the probe and every segment
        self._arena = None
        self._shm_ready = False

    def close(self) -> None:
        """Forget every request and unlink every shared-memory segment (idempotent)."""
        self.closed = True
        self._in_flight.clear()
        self._by_segment.clear()
        self._probe = None
        self._drop_arena()


__all__ = [
    "ANSWER_LIMITS",
    "IDEMPOTENT_OPS",
    "Answered",
    "ClientSession",
    "DaemonError",
    "DaemonTimeout",
    "DaemonUnavailable",
    "Failed",
    "OpCall",
    "SessionEvent",
    "clip_encode_call",
    "conditioning",
    "shutdown_call",
    "single_tensor",
    "vae_decode_call",
    "vae_encode_call",
]
