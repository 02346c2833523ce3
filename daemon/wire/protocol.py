"""Luna wire protocol v1: frame codec and message types, Sans-I/O (bytes in, messages out).

This module owns the byte format spoken on the daemon's TCP port (spec: ``daemon/PROTOCOL.md``).
It never touches a socket, a thread or an event loop: callers feed received bytes to a
:class:`FrameDecoder` and get :class:`Request` / :class:`Response` / :class:`ErrorResponse` /
:class:`Rejected` objects back, and turn messages into a list of buffers with the ``encode_*``
functions (ready for ``socket.sendmsg`` / ``sendall`` one by one; tensor bytes are never copied).
It is pure (no shared state) and safe to use from any thread, one decoder per connection.

Frame = 16-byte prefix (magic ``LUNA``, header length u32, payload length u64, big-endian)
+ UTF-8 JSON header + payload (raw little-endian C-order tensor bytes, each tensor starting on a
64-byte boundary). Tensors may instead live in shared memory (descriptor ``shm``); the decoder
resolves those through a caller-supplied reader so it stays free of I/O. Never pickle.

Dependencies: stdlib + numpy only, and no absolute imports of the package, so this file can be
vendored into the ComfyUI node pack together with ``client.py`` and ``shm.py``.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION: int = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAGIC = b"LUNA"
PREFIX = struct.Struct(">4sIQ")  # magic, header length, payload length
PREFIX_SIZE = PREFIX.size
TENSOR_ALIGNMENT = 64
MAX_REQUEST_ID = 2**53 - 1  # exact in every JSON implementation (JavaScript included)
MAX_OP_LENGTH = 64
# Shared-memory names (PROTOCOL.md §6): the client's prefix is ``lu`` + 10 hex digits, its
# segments ``<prefix>_<n>`` with ``n`` in hex. Checked wherever a peer names a segment.
SHM_PREFIX_PATTERN = re.compile(r"lu[0-9a-f]{10}")
SHM_SEGMENT_PATTERN = re.compile(r"(lu[0-9a-f]{10})_[0-9a-f]{1,16}")
MAX_SHM_OFFSET = 1 << 48

# Wire dtype names → numpy dtypes. bfloat16 travels as raw 16-bit words (numpy has no bf16).
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}
# float16 and bfloat16 are wire encodings only: decoded arrays are float32.
HALF_WIRE_DTYPES = ("float16", "bfloat16")
_NATIVE_TO_WIRE: dict[np.dtype, str] = {
    np.dtype("float32"): "float32",
    np.dtype("float16"): "float16",
    np.dtype("uint8"): "uint8",
    np.dtype("int32"): "int32",
    np.dtype("int64"): "int64",
}

# Ops answered by the transport itself; the rest go to the op handler.
OP_HELLO = "hello"
OP_PING = "ping"
HANDLER_OPS = ("status", "models", "clip_encode", "vae_encode", "vae_decode", "shutdown")


class ErrorCode(str, enum.Enum):
    """Error codes of error responses. ``retryable`` travels separately in each response."""

    BAD_REQUEST = "BAD_REQUEST"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    NOT_LOADED = "NOT_LOADED"
    OOM = "OOM"
    TIMEOUT = "TIMEOUT"
    BUSY = "BUSY"
    UNAUTHORIZED = "UNAUTHORIZED"
    TOO_LARGE = "TOO_LARGE"
    INTERNAL = "INTERNAL"
    SHUTTING_DOWN = "SHUTTING_DOWN"


class OpError(Exception):
    """Raised by op handlers for expected failures; the transport turns it into an error response."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool = False):
        super().__init__(f"{ErrorCode(code).value}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.retryable = retryable


class ProtocolError(Exception):
    """The byte stream broke the framing (bad magic, oversize, garbage header, cut short).

    The receiver cannot find the next frame boundary, so it answers (``code``) and closes.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Size and time limits of one endpoint; the server reports them in ``hello``."""

    max_header_bytes: int = 1 << 20
    max_payload_bytes: int = 1 << 30  # inline tensor bytes of one frame
    max_tensors: int = 8
    max_dims: int = 8
    max_elements: int = 1 << 28  # per tensor (1 GiB of float32)
    read_timeout: float = 30.0  # seconds to finish a frame once its first byte arrived
    write_timeout: float = 60.0  # seconds a peer may take to drain one response
    max_in_flight: int = 16  # requests per connection being handled at once; more → BUSY
    max_connections: int = 64
    request_timeout: float | None = 600.0  # handler time per request; None = unlimited
    # On a daemon with a token: seconds a new connection has to authenticate in hello before
    # it is closed (so idle anonymous connections cannot hold every slot of max_connections).
    auth_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_payload_bytes",
            "max_tensors",
            "max_dims",
            "max_elements",
            "max_in_flight",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")
        if self.read_timeout <= 0 or self.write_timeout <= 0 or self.auth_timeout <= 0:
            raise ValueError("Limits timeouts must be > 0")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError("Limits.request_timeout must be > 0 or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor's bytes lie in a named shared-memory segment."""

    segment: str
    offset: int


@dataclass(frozen=True)
class TensorDescriptor:
    """What the header says about one tensor: wire dtype, shape, byte length, optional shm place."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    shm: ShmRef | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes}
        if self.shm is not None:
            out["shm"] = {"segment": self.shm.segment, "offset": self.shm.offset}
        return out


@dataclass(frozen=True)
class Request:
    """A client's request: ``op`` with JSON ``options`` and input tensors."""

    id: int
    op: str
    options: dict = field(default_factory=dict)
    tensors: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class Response:
    """A successful answer to request ``id``."""

    id: int
    result: dict = field(default_factory=dict)
    tensors: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class ErrorResponse:
    """A failed answer to request ``id`` (``id`` 0: about the connection, not one request)."""

    id: int
    code: ErrorCode
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class Rejected:
    """A frame that arrived whole but broke a rule in its header (bad dtype, shape, version…).

    Framing is intact, so the receiver answers ``id`` with an error and carries on.
    """

    id: int
    code: ErrorCode
    message: str


Message = Request | Response | ErrorResponse
Decoded = Request | Response | ErrorResponse | Rejected
# Maps a shared-memory reference + byte length to a readable buffer (raises on any failure).
ShmReader = Callable[[ShmRef, int], "memoryview"]
# Decides where one wire-ready array goes: an ShmRef after copying it into shared memory, or None.
ShmPlacer = Callable[[np.ndarray], "ShmRef | None"]


# --------------------------------------------------------------------------- tensors


def float32_to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest-even), returned as little-endian uint16 words."""
    bits = np.asarray(array, dtype="<f4", order="C").view("<u4")
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    words = ((bits + rounding) >> 16).astype("<u2")
    nan = np.isnan(array)
    if nan.any():
        words[nan] = 0x7FC0
    return words


def bfloat16_bits_to_float32(words: np.ndarray) -> np.ndarray:
    """Widen bfloat16 words (uint16) to float32 exactly."""
    return (words.astype("<u4") << 16).view("<f4")


def to_wire_array(array: np.ndarray, wire_dtype: str | None = None) -> tuple[np.ndarray, str]:
    """Return a C-contiguous little-endian array ready to send and its wire dtype name.

    ``wire_dtype`` ("float16"/"bfloat16"/"float32") converts float32 arrays to halve the bytes;
    other dtypes are sent as they are. Raises ``TypeError`` for dtypes outside the whitelist.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    name = _NATIVE_TO_WIRE.get(native)
    if name is None:
        raise TypeError(
            f"dtype {array.dtype} is not allowed on the wire; use one of {', '.join(WIRE_DTYPES)}"
        )
    if wire_dtype is not None and wire_dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"wire_dtype must be float32, float16 or bfloat16, not {wire_dtype!r}")
    if name == "float32" and wire_dtype == "bfloat16":
        return float32_to_bfloat16_bits(array), "bfloat16"
    if name == "float32" and wire_dtype == "float16":
        return np.asarray(array, dtype="<f2", order="C"), "float16"
    # asarray(order="C"), not ascontiguousarray: the latter turns 0-d arrays into 1-d ones.
    return np.asarray(array, dtype=WIRE_DTYPES[name], order="C"), name


def _byte_view(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))


def _aligned(offset: int) -> int:
    return -(-offset // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT


def _aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised byte array whose start is on a TENSOR_ALIGNMENT boundary (SIMD-friendly
    views for every tensor; numpy alone only promises 16 bytes)."""
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, dtype=np.uint8)
    skip = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[skip : skip + nbytes]


def is_shm_prefix(prefix: Any) -> bool:
    """True for a shared-memory prefix as PROTOCOL.md §6 states it: ``lu`` + 10 lower-case hex."""
    return type(prefix) is str and SHM_PREFIX_PATTERN.fullmatch(prefix) is not None


def is_shm_segment_name(name: Any, prefix: str | None = None) -> bool:
    """True for a segment name ``<prefix>_<hex>`` (§6), of ``prefix`` when one is given.

    Nothing else is ever mapped: no path separators, no ``Local\\`` / ``Global\\`` namespaces,
    no other program's segment that merely starts with the same letters.
    """
    if type(name) is not str:
        return False
    match = SHM_SEGMENT_PATTERN.fullmatch(name)
    return match is not None and (prefix is None or match.group(1) == prefix)


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a peer's value, cut short (error messages must not echo megabytes back)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checked_shape(shape: Any, limits: Limits) -> list[int]:
    """A descriptor's shape, every dimension bounded (not only the product: ``[0, 2**63]`` has
    no elements but no buffer or array of that shape can be made)."""
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise ValueError(f"shape must be a list of at most {limits.max_dims} dimensions")
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise ValueError("shape dimensions must be non-negative integers")
    if any(dim > limits.max_elements for dim in shape):
        raise ValueError(f"every shape dimension must be at most {limits.max_elements}")
    # The product of the non-zero dimensions is bounded too, so an empty tensor's strides and
    # any reshaping of it stay as small as those of a full tensor within the limit.
    nonzero = math.prod(dim for dim in shape if dim)
    if nonzero > limits.max_elements:
        raise ValueError(
            f"tensor shape {shape} spans {nonzero} elements, more than the limit {limits.max_elements}"
        )
    return shape


def parse_descriptor(raw: Any, limits: Limits) -> TensorDescriptor:
    """Validate one header tensor descriptor; raises ``ValueError`` naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("tensor descriptor must be an object")
    dtype = raw.get("dtype")
    # Type before membership: a list or an object is unhashable and must not raise TypeError.
    if type(dtype) is not str or dtype not in WIRE_DTYPES:
        raise ValueError(f"dtype {_short(dtype)} is not allowed; use one of {', '.join(WIRE_DTYPES)}")
    shape = _checked_shape(raw.get("shape"), limits)
    elements = math.prod(shape)
    nbytes = raw.get("nbytes")
    expected = elements * WIRE_DTYPES[dtype].itemsize
    if type(nbytes) is not int or nbytes != expected:
        raise ValueError(f"nbytes {_short(nbytes)} does not match {dtype} shape {shape} ({expected} bytes)")
    shm = None
    if "shm" in raw:
        place = raw["shm"]
        if (
            not isinstance(place, dict)
            or not is_shm_segment_name(place.get("segment"))
            or type(place.get("offset")) is not int
            or not 0 <= place["offset"] <= MAX_SHM_OFFSET
        ):
            raise ValueError("shm must be {segment: '<prefix>_<hex>', offset: int >= 0}")
        shm = ShmRef(place["segment"], place["offset"])
    return TensorDescriptor(dtype, tuple(shape), nbytes, shm)


def array_from_buffer(buffer: Any, descriptor: TensorDescriptor, offset: int = 0) -> np.ndarray:
    """View (no copy) ``descriptor``'s tensor in ``buffer``; half precision is widened to float32."""
    wire = WIRE_DTYPES[descriptor.dtype]
    count = descriptor.nbytes // wire.itemsize
    flat = np.frombuffer(buffer, dtype=wire, count=count, offset=offset)
    if descriptor.dtype == "bfloat16":
        flat = bfloat16_bits_to_float32(flat)
    elif descriptor.dtype == "float16":
        flat = flat.astype(np.float32)
    return flat.reshape(descriptor.shape)


# --------------------------------------------------------------------------- encoding


def _json_bytes(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _check_id(request_id: int) -> None:
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id must be an int in [0, 2**53), not {request_id!r}")


def _encode_frame(
    header: dict, tensors: Sequence[np.ndarray], wire_dtype: str | None, place: ShmPlacer | None
) -> list[Any]:
    descriptors: list[dict] = []
    body: list[Any] = []
    payload_len = 0
    for tensor in tensors:
        wire_array, name = to_wire_array(tensor, wire_dtype)
        descriptor = TensorDescriptor(name, tuple(int(d) for d in wire_array.shape), wire_array.nbytes)
        ref = place(wire_array) if place is not None else None
        if ref is not None:
            descriptor = TensorDescriptor(descriptor.dtype, descriptor.shape, descriptor.nbytes, ref)
        elif wire_array.nbytes:
            start = _aligned(payload_len)
            if start != payload_len:
                body.append(bytes(start - payload_len))
            body.append(_byte_view(wire_array))
            payload_len = start + wire_array.nbytes
        descriptors.append(descriptor.to_json())
    header["tensors"] = descriptors
    header_bytes = _json_bytes(header)
    head = PREFIX.pack(MAGIC, len(header_bytes), payload_len) + header_bytes
    if payload_len <= 256 * 1024:
        # Small frames go out as one buffer: one syscall, no Nagle interplay.
        return [b"".join([head, *body])]
    return [head, *body]


def encode_request(
    request: Request, *, wire_dtype: str | None = None, place: ShmPlacer | None = None
) -> list[Any]:
    """Encode a request as buffers to send in order (tensor memory is referenced, not copied)."""
    _check_id(request.id)
    if not isinstance(request.op, str) or not 0 < len(request.op) <= MAX_OP_LENGTH:
        raise ValueError(f"op must be a non-empty string of at most {MAX_OP_LENGTH} characters")
    header = {"v": PROTOCOL_VERSION, "id": request.id, "op": request.op, "options": dict(request.options)}
    return _encode_frame(header, request.tensors, wire_dtype, place)


def encode_response(
    response: Response, *, wire_dtype: str | None = None, place: ShmPlacer | None = None
) -> list[Any]:
    """Encode a successful response; ``wire_dtype`` may narrow float32 tensors to 16 bits."""
    _check_id(response.id)
    header = {"v": PROTOCOL_VERSION, "id": response.id, "ok": True, "result": dict(response.result)}
    return _encode_frame(header, response.tensors, wire_dtype, place)


def encode_error(error: ErrorResponse) -> list[Any]:
    """Encode an error response (never carries tensors)."""
    _check_id(error.id)
    header = {
        "v": PROTOCOL_VERSION,
        "id": error.id,
        "ok": False,
        "error": {
            "code": ErrorCode(error.code).value,
            "message": str(error.message),
            "retryable": bool(error.retryable),
        },
    }
    return _encode_frame(header, (), None, None)


def frame_bytes(buffers: Sequence[Any]) -> bytes:
    """Join encoded buffers (tests and tiny messages; real senders send the list)."""
    return b"".join(bytes(b) for b in buffers)


# --------------------------------------------------------------------------- decoding


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _HeaderError(ValueError):
    """A rule broken inside a well-framed header; carries the request id and code to answer."""

    def __init__(self, request_id: int, code: ErrorCode, message: str):
        super().__init__(message)
        self.request_id = request_id
        self.code = code


@dataclass
class _Pending:
    """A frame whose header is parsed and whose payload is still arriving."""

    kind: str  # "request" | "response" | "error" | "rejected"
    header: dict
    descriptors: tuple[TensorDescriptor, ...]
    payload: np.ndarray | None  # None: payload is discarded (rejected frame)
    remaining: int
    filled: int = 0
    rejection: _HeaderError | None = None


class FrameDecoder:
    """Incremental decoder for one connection's byte stream (Sans-I/O, not thread-safe).

    Two ways in: :meth:`feed` (any bytes-like; copies them) or the zero-copy pair
    :meth:`get_buffer` / :meth:`buffer_updated` (``recv_into`` straight into the payload of a
    large frame). Both return the messages completed so far, in arrival order. Raises
    :class:`ProtocolError` when the stream cannot be framed any more; the decoder is then dead.
    """

    _SCRATCH = 256 * 1024
    _DIRECT_MIN = 64 * 1024
    _RECYCLE_MIN = 1 << 20

    def __init__(self, limits: Limits | None = None, *, shm_reader: ShmReader | None = None):
        self.limits = limits or Limits()
        self.shm_reader = shm_reader
        self._buffer = bytearray()  # bytes of the current prefix + header
        self._need_header = 0
        self._payload_len = 0
        self._pending: _Pending | None = None
        self._scratch = bytearray(self._SCRATCH)
        self._direct = False
        self._dead: ProtocolError | None = None
        self.frames_decoded = 0
        self.bytes_received = 0
        self._shm_bytes = 0
        self._spare: np.ndarray | None = None  # last big payload buffer, reused once unreferenced
        self._spare_lent: weakref.ref[np.ndarray] | None = None

    def take_shm_bytes(self) -> int:
        """Tensor bytes read from shared memory since the last call (for statistics)."""
        taken, self._shm_bytes = self._shm_bytes, 0
        return taken

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived (the read timeout runs only then)."""
        return bool(self._buffer) or self._pending is not None

    # -- zero-copy path
    def get_buffer(self) -> memoryview:
        """A writable buffer for the next received bytes (then call :meth:`buffer_updated`)."""
        pending = self._pending
        if pending is not None and pending.payload is not None and pending.remaining >= self._DIRECT_MIN:
            self._direct = True
            view = memoryview(pending.payload)
            return view[pending.filled : pending.filled + pending.remaining].cast("B")
        self._direct = False
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> list[Decoded]:
        """Account for ``nbytes`` written into the last :meth:`get_buffer` result."""
        if self._direct:
            self._direct = False
            pending = self._pending
            assert pending is not None and 0 <= nbytes <= pending.remaining
            pending.filled += nbytes
            pending.remaining -= nbytes
            self.bytes_received += nbytes
            out: list[Decoded] = []
            if pending.remaining == 0:
                out.append(self._finish())
            return out
        return self.feed(memoryview(self._scratch)[:nbytes])

    # -- copying path
    def feed(self, data: Any) -> list[Decoded]:
        """Consume received bytes; return every message they complete."""
        if self._dead is not None:
            raise self._dead
        view = memoryview(data).cast("B")
        self.bytes_received += len(view)
        out: list[Decoded] = []
        try:
            while view:
                if self._pending is not None:
                    view = self._feed_payload(view, out)
                else:
                    view = self._feed_head(view, out)
        except ProtocolError as exc:
            self._dead = exc
            raise
        return out

    def eof(self) -> None:
        """The peer closed its side; raises :class:`ProtocolError` if a frame was cut short."""
        if self.in_frame:
            self._dead = ProtocolError("connection closed in the middle of a frame")
            raise self._dead

    def _feed_head(self, view: memoryview, out: list[Decoded]) -> memoryview:
        buffer = self._buffer
        if len(buffer) < PREFIX_SIZE:
            take = PREFIX_SIZE - len(buffer)
            buffer += view[:take]
            view = view[take:]
            if len(buffer) < PREFIX_SIZE:
                return view
            self._parse_prefix()
        need = PREFIX_SIZE + self._need_header - len(buffer)
        buffer += view[:need]
        view = view[need:]
        if len(buffer) == PREFIX_SIZE + self._need_header:
            header = bytes(buffer[PREFIX_SIZE:])
            buffer.clear()
            self._start_payload(header)
            if self._pending is not None and self._pending.remaining == 0:
                out.append(self._finish())
        return view

    def _parse_prefix(self) -> None:
        magic, header_len, payload_len = PREFIX.unpack(bytes(self._buffer[:PREFIX_SIZE]))
        if magic != MAGIC:
            raise ProtocolError(f"bad frame magic {magic!r} (not a Luna protocol stream)")
        if not 2 <= header_len <= self.limits.max_header_bytes:
            raise ProtocolError(
                f"header length {header_len} outside 2..{self.limits.max_header_bytes}",
                ErrorCode.TOO_LARGE if header_len > 2 else ErrorCode.BAD_REQUEST,
            )
        if payload_len > self.limits.max_payload_bytes:
            raise ProtocolError(
                f"payload of {payload_len} bytes is over the limit of {self.limits.max_payload_bytes}",
                ErrorCode.TOO_LARGE,
            )
        self._need_header = header_len
        self._payload_len = payload_len

    def _start_payload(self, header_bytes: bytes) -> None:
        try:
            header = json.loads(header_bytes, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise ProtocolError(f"frame header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError("frame header must be a JSON object")
        payload_len = self._payload_len
        try:
            kind, descriptors = self._check_header(header, payload_len)
        except _HeaderError as rejection:
            self._pending = _Pending("rejected", header, (), None, payload_len, rejection=rejection)
            return
        self._pending = _Pending(kind, header, descriptors, self._payload_buffer(payload_len), payload_len)

    def _payload_buffer(self, payload_len: int) -> np.ndarray | None:
        if not payload_len:
            return None
        owner = self._spare
        # The previous big payload is written over only once nothing made from it is alive:
        # ``_spare_lent`` is a weak reference to the array every decoded tensor was cut from
        # (see ``_finish``), so it is dead exactly when no tensor, view, memoryview or torch
        # tensor still uses that memory. No refcount values involved.
        lent = self._spare_lent
        if (
            owner is not None
            and payload_len + TENSOR_ALIGNMENT <= owner.size <= 2 * payload_len + TENSOR_ALIGNMENT
            and (lent is None or lent() is None)
        ):
            skip = -owner.ctypes.data % TENSOR_ALIGNMENT
            return owner[skip : skip + payload_len]
        return _aligned_empty(payload_len)

    def _check_header(self, header: dict, payload_len: int) -> tuple[str, tuple[TensorDescriptor, ...]]:
        request_id = header.get("id")
        if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
            raise _HeaderError(0, ErrorCode.BAD_REQUEST, "header id must be an int in [0, 2**53)")
        version = header.get("v")
        if version not in SUPPORTED_VERSIONS or type(version) is not int:
            raise _HeaderError(
                request_id,
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {version!r} is not supported; supported: {list(SUPPORTED_VERSIONS)}",
            )
        if "op" in header:
            op = header["op"]
            if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_LENGTH:
                raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, "op must be a short non-empty string")
            if not isinstance(header.get("options", {}), dict):
                raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, "options must be an object")
            kind = "request"
        elif header.get("ok") is True:
            if not isinstance(header.get("result", {}), dict):
                raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, "result must be an object")
            kind = "response"
        elif header.get("ok") is False:
            error = header.get("error")
            if not isinstance(error, dict) or not isinstance(error.get("code"), str):
                raise _HeaderError(
                    request_id, ErrorCode.BAD_REQUEST, "error must be {code, message, retryable}"
                )
            kind = "error"
        else:
            raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, "header needs either op or ok")
        raw_tensors = header.get("tensors", [])
        if not isinstance(raw_tensors, list) or len(raw_tensors) > self.limits.max_tensors:
            raise _HeaderError(
                request_id,
                ErrorCode.TOO_LARGE if isinstance(raw_tensors, list) else ErrorCode.BAD_REQUEST,
                f"tensors must be a list of at most {self.limits.max_tensors}",
            )
        if kind == "error" and raw_tensors:
            raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, "error responses carry no tensors")
        descriptors = []
        inline_end = 0
        for index, raw in enumerate(raw_tensors):
            try:
                descriptor = parse_descriptor(raw, self.limits)
            except ValueError as exc:
                raise _HeaderError(request_id, ErrorCode.BAD_REQUEST, f"tensor {index}: {exc}") from None
            if descriptor.shm is None and descriptor.nbytes:
                inline_end = _aligned(inline_end) + descriptor.nbytes
            descriptors.append(descriptor)
        if inline_end != payload_len:
            raise _HeaderError(
                request_id,
                ErrorCode.BAD_REQUEST,
                f"payload is {payload_len} bytes but the tensor descriptors need {inline_end}",
            )
        return kind, tuple(descriptors)

    def _feed_payload(self, view: memoryview, out: list[Decoded]) -> memoryview:
        pending = self._pending
        assert pending is not None
        take = min(pending.remaining, len(view))
        if pending.payload is not None:
            pending.payload[pending.filled : pending.filled + take] = np.frombuffer(view[:take], np.uint8)
        pending.filled += take
        pending.remaining -= take
        if pending.remaining == 0:
            out.append(self._finish())
        return view[take:]

    def _finish(self) -> Decoded:
        pending = self._pending
        assert pending is not None
        self._pending = None
        self.frames_decoded += 1
        header = pending.header
        if pending.rejection is not None:
            return Rejected(pending.rejection.request_id, pending.rejection.code, str(pending.rejection))
        request_id = header["id"]
        if pending.kind == "error":
            error = header["error"]
            try:
                code = ErrorCode(error["code"])
                message = str(error.get("message", ""))
            except ValueError:
                code, message = ErrorCode.INTERNAL, f"{error['code']}: {error.get('message', '')}"
            return ErrorResponse(request_id, code, message, bool(error.get("retryable", False)))
        payload = pending.payload
        if payload is not None:
            # Tensors are cut from ``lent``, an array over a memoryview of the payload: numpy
            # collapses view chains down to the array that owns the memory, but stops at a
            # memoryview, so every tensor (and every view of one) keeps ``lent`` alive, and
            # the weak reference to it says whether the payload memory may be reused.
            lent = np.frombuffer(memoryview(payload), np.uint8)
            if payload.size >= self._RECYCLE_MIN:
                self._spare = payload.base  # the owning array (payloads are aligned views)
                self._spare_lent = weakref.ref(lent)
            pending.payload = lent
            del lent
        del payload
        try:
            tensors = self._tensors(pending)
        except _HeaderError as rejection:
            return Rejected(request_id, rejection.code, str(rejection))
        if pending.kind == "request":
            return Request(request_id, header["op"], header.get("options", {}), tensors)
        return Response(request_id, header.get("result", {}), tensors)

    def _tensors(self, pending: _Pending) -> tuple[np.ndarray, ...]:
        arrays = []
        offset = 0
        for index, descriptor in enumerate(pending.descriptors):
            if descriptor.shm is not None:
                if self.shm_reader is None:
                    raise _HeaderError(
                        pending.header["id"],
                        ErrorCode.BAD_REQUEST,
                        f"tensor {index} is in shared memory, which was not negotiated",
                    )
                try:
                    buffer = self.shm_reader(descriptor.shm, descriptor.nbytes)
                    arrays.append(array_from_buffer(buffer, descriptor))
                    self._shm_bytes += descriptor.nbytes
                except (OSError, ValueError, KeyError, BufferError) as exc:
                    raise _HeaderError(
                        pending.header["id"],
                        ErrorCode.BAD_REQUEST,
                        f"tensor {index}: shared memory {descriptor.shm.segment!r} unreadable: {exc}",
                    ) from None
                continue
            if descriptor.nbytes == 0:
                arrays.append(
                    np.zeros(
                        descriptor.shape,
                        dtype=np.float32
                        if descriptor.dtype in HALF_WIRE_DTYPES
                        else WIRE_DTYPES[descriptor.dtype],
                    )
                )
                continue
            offset = _aligned(offset)
            arrays.append(array_from_buffer(pending.payload, descriptor, offset))
            offset += descriptor.nbytes
        return tuple(arrays)


def decode_all(data: bytes, limits: Limits | None = None) -> list[Decoded]:
    """Decode a complete byte string (tests, tools). Raises ProtocolError on a partial frame."""
    decoder = FrameDecoder(limits)
    out = decoder.feed(data)
    decoder.eof()
    return out
