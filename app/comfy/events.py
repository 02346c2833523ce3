"""Typed ComfyUI WebSocket events and the Sans-I/O parser that produces them.

Owns: one frozen dataclass per message ComfyUI sends on ``/ws`` (text: ``status``,
``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``progress_state``,
``executed``, ``execution_success``, ``execution_error``, ``execution_interrupted``,
``feature_flags``, ``logs``, ``notification``; binary: preview image type 1, preview with
metadata type 4, progress text type 3), :func:`parse_text` / :func:`parse_binary`, and a few
client-side events (:class:`ConnectionLost`, :class:`Reconnected`, :class:`JobQueued`, and the
router's :class:`JobResubmitted` / :class:`JobCancelled`) that are put into the same streams. The
:data:`ComfyEvent` union names them all: it is the type of every listener and event iterator of
the client, the job tracker, the router and the render service.

Unknown message types and unknown binary ids become :class:`UnknownMessage` /
:class:`UnknownBinary` (custom nodes add their own); a frame that is not valid JSON or is
truncated raises :class:`MessageParseError`. Pure functions, no I/O, any thread.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.comfy.errors import ComfyProtocolError


class MessageParseError(ComfyProtocolError):
    """A WebSocket frame could not be decoded (bad JSON, truncated binary header)."""


# --- text events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    """Queue length changed (broadcast); ``sid`` is set only on the first message after connect."""

    queue_remaining: int | None
    sid: str | None = None
    prompt_id: None = None


@dataclass(frozen=True)
class ExecutionStart:
    """The worker picked the prompt up: it is running now."""

    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionCached:
    """These nodes' outputs are reused from the cache and will not run."""

    prompt_id: str
    nodes: tuple[str, ...]
    timestamp: int | None = None


@dataclass(frozen=True)
class Executing:
    """A node starts (``node`` set), or the prompt finished and history is written (``node`` None).

    On reconnect ComfyUI re-sends ``executing`` for the running node without a ``prompt_id``.
    """

    prompt_id: str | None
    node: str | None
    display_node: str | None = None

    @property
    def finished(self) -> bool:
        return self.node is None


@dataclass(frozen=True)
class Progress:
    """Step progress of one node (``value`` of ``max``); old servers omit prompt_id and node."""

    prompt_id: str | None
    node: str | None
    value: float
    max: float

    @property
    def fraction(self) -> float:
        return 0.0 if not self.max else min(1.0, max(0.0, self.value / self.max))


@dataclass(frozen=True)
class NodeProgress:
    """One node's entry in ``progress_state``: ``state`` is pending/running/finished/error."""

    node_id: str
    value: float
    max: float
    state: str
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass(frozen=True)
class ProgressState:
    """Whole-graph node states (newer servers, broadcast)."""

    prompt_id: str
    nodes: Mapping[str, NodeProgress]


@dataclass(frozen=True)
class Executed:
    """A node produced UI output; ``output`` is what lands in ``history.outputs[node]``.

    ``output`` may be None for cached output nodes on newer executors.
    """

    prompt_id: str
    node: str
    display_node: str | None
    output: Mapping[str, Any] | None


@dataclass(frozen=True)
class ExecutionSuccess:
    """All nodes ran. Sent BEFORE the history entry is written (ComfyUI #11540)."""

    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionError:
    """A node raised; fields as ComfyUI sends them (``current_outputs`` was a dict on old servers)."""

    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()
    executed: tuple[str, ...] = ()
    current_inputs: Mapping[str, Any] = field(default_factory=dict)
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionInterrupted:
    """The prompt was interrupted (broadcast to every socket)."""

    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: tuple[str, ...] = ()
    timestamp: int | None = None


@dataclass(frozen=True)
class FeatureFlags:
    """The server's reply to our ``feature_flags`` handshake."""

    flags: Mapping[str, Any]
    prompt_id: None = None


@dataclass(frozen=True)
class LogsEvent:
    """Server log lines (only after ``PATCH /internal/logs/subscribe``)."""

    entries: tuple[tuple[Any, str], ...]
    prompt_id: None = None


@dataclass(frozen=True)
class UnknownMessage:
    """A text message type this client does not know (custom nodes add their own)."""

    type: str
    data: Any
    prompt_id: str | None = None


# --- binary events ----------------------------------------------------------------------------

BINARY_PREVIEW_IMAGE = 1
BINARY_UNENCODED_PREVIEW = 2
BINARY_TEXT = 3
BINARY_PREVIEW_WITH_METADATA = 4

_LEGACY_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


@dataclass(frozen=True)
class PreviewImage:
    """A live preview (binary type 1 or 4). Type 1 carries no ids: the client fills them in."""

    prompt_id: str | None
    node_id: str | None
    mime_type: str
    data: bytes = field(repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_type: int = BINARY_PREVIEW_IMAGE


@dataclass(frozen=True)
class ProgressText:
    """Text a node reports while running (binary type 3)."""

    node_id: str
    text: str
    prompt_id: None = None


@dataclass(frozen=True)
class UnknownBinary:
    """A binary frame with an id this client does not know (ignored, not an error)."""

    event_type: int
    payload: bytes = field(repr=False)
    prompt_id: None = None


# --- client-side events -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobQueued:
    """The client's own event: ``POST /prompt`` accepted the job (warnings = 200 node_errors)."""

    prompt_id: str
    number: float | None
    instance: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionLost:
    """The client's own event: the WebSocket closed; it is reconnecting."""

    instance: str
    reason: str
    prompt_id: None = None


@dataclass(frozen=True)
class Reconnected:
    """The client's own event: the WebSocket is back and the jobs were reconciled."""

    instance: str
    attempts: int
    prompt_id: None = None


@dataclass(frozen=True)
class JobResubmitted:
    """The router's own event: ``instance`` lost the job before it started; it goes elsewhere."""

    prompt_id: str
    instance: str
    reason: str


@dataclass(frozen=True)
class JobCancelled:
    """The router's own event: the caller cancelled the job; ``outcome`` is what the server did.

    ``outcome`` is ``"dequeued"``, ``"interrupted"``, ``"not_found"`` (it had ended, or never
    reached the server) or ``"failed"`` (the instance could not be asked; ``error`` says why).
    """

    prompt_id: str
    instance: str | None
    outcome: str
    error: str | None = None


ComfyEvent = (
    StatusEvent
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
    | FeatureFlags
    | LogsEvent
    | UnknownMessage
    | PreviewImage
    | ProgressText
    | UnknownBinary
    | JobQueued
    | ConnectionLost
    | Reconnected
    | JobResubmitted
    | JobCancelled
)
"""Every event of an instance's stream and of a job's stream (what listeners receive)."""


# --- parsing ----------------------------------------------------------------------------------


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _ids(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):  # old servers: dict keyed by node id
        return tuple(str(k) for k in value)
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()


def _event_from(kind: str, data: Mapping[str, Any]) -> ComfyEvent:
    pid = _opt_str(data.get("prompt_id"))
    if kind == "status":
        status = data.get("status") or {}
        exec_info = status.get("exec_info") if isinstance(status, Mapping) else None
        remaining = exec_info.get("queue_remaining") if isinstance(exec_info, Mapping) else None
        return StatusEvent(_opt_int(remaining), _opt_str(data.get("sid")))
    if kind == "execution_start" and pid:
        return ExecutionStart(pid, _opt_int(data.get("timestamp")))
    if kind == "execution_cached" and pid:
        return ExecutionCached(pid, _ids(data.get("nodes")), _opt_int(data.get("timestamp")))
    if kind == "executing":
        return Executing(pid, _opt_str(data.get("node")), _opt_str(data.get("display_node")))
    if kind == "progress":
        return Progress(pid, _opt_str(data.get("node")), _num(data.get("value")), _num(data.get("max")))
    if kind == "progress_state" and pid:
        nodes: dict[str, NodeProgress] = {}
        raw_nodes = data.get("nodes")
        if isinstance(raw_nodes, Mapping):
            for node_id, entry in raw_nodes.items():
                if not isinstance(entry, Mapping):
                    continue
                nodes[str(node_id)] = NodeProgress(
                    node_id=str(entry.get("node_id", node_id)),
                    value=_num(entry.get("value")),
                    max=_num(entry.get("max")),
                    state=str(entry.get("state", "running")),
                    display_node_id=_opt_str(entry.get("display_node_id")),
                    parent_node_id=_opt_str(entry.get("parent_node_id")),
                    real_node_id=_opt_str(entry.get("real_node_id")),
                )
        return ProgressState(pid, nodes)
    if kind == "executed" and pid and data.get("node") is not None:
        output = data.get("output")
        return Executed(
            pid,
            str(data["node"]),
            _opt_str(data.get("display_node")),
            dict(output) if isinstance(output, Mapping) else None,
        )
    if kind == "execution_success" and pid:
        return ExecutionSuccess(pid, _opt_int(data.get("timestamp")))
    if kind == "execution_error" and pid:
        inputs = data.get("current_inputs")
        return ExecutionError(
            prompt_id=pid,
            node_id=_opt_str(data.get("node_id")),
            node_type=_opt_str(data.get("node_type")),
            exception_type=str(data.get("exception_type") or "Exception"),
            exception_message=str(data.get("exception_message") or ""),
            traceback=tuple(str(line) for line in data.get("traceback") or ()),
            executed=_ids(data.get("executed")),
            current_inputs=dict(inputs) if isinstance(inputs, Mapping) else {},
            timestamp=_opt_int(data.get("timestamp")),
        )
    if kind == "execution_interrupted" and pid:
        return ExecutionInterrupted(
            pid,
            _opt_str(data.get("node_id")),
            _opt_str(data.get("node_type")),
            _ids(data.get("executed")),
            _opt_int(data.get("timestamp")),
        )
    if kind == "feature_flags":
        return FeatureFlags(dict(data))
    if kind == "logs":
        entries = []
        for entry in data.get("entries") or ():
            if isinstance(entry, Mapping):
                entries.append((entry.get("t"), str(entry.get("m", ""))))
        return LogsEvent(tuple(entries))
    return UnknownMessage(kind, dict(data), pid)


def parse_text(frame: str | bytes) -> ComfyEvent:
    """Decode one text frame ``{"type": ..., "data": {...}}`` into its typed event."""
    try:
        message = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageParseError(f"WebSocket text frame is not JSON: {exc}") from exc
    if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
        raise MessageParseError("WebSocket message has no 'type'")
    data = message.get("data")
    if not isinstance(data, Mapping):
        return UnknownMessage(message["type"], data)
    return _event_from(message["type"], data)


def parse_binary(frame: bytes) -> ComfyEvent:
    """Decode one binary frame (big-endian uint32 event id first)."""
    if len(frame) < 4:
        raise MessageParseError(f"binary frame of {len(frame)} bytes has no event id")
    (event_type,) = struct.unpack_from(">I", frame, 0)
    if event_type == BINARY_PREVIEW_IMAGE:
        if len(frame) < 8:
            raise MessageParseError("preview frame has no image type")
        (image_type,) = struct.unpack_from(">I", frame, 4)
        mime = _LEGACY_IMAGE_TYPES.get(image_type, "application/octet-stream")
        return PreviewImage(None, None, mime, bytes(frame[8:]), {}, BINARY_PREVIEW_IMAGE)
    if event_type == BINARY_PREVIEW_WITH_METADATA:
        if len(frame) < 8:
            raise MessageParseError("preview-with-metadata frame has no metadata length")
        (length,) = struct.unpack_from(">I", frame, 4)
        end = 8 + length
        if len(frame) < end:
            raise MessageParseError("preview-with-metadata frame is shorter than its metadata")
        try:
            metadata = json.loads(bytes(frame[8:end]).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageParseError(f"preview metadata is not JSON: {exc}") from exc
        if not isinstance(metadata, Mapping):
            metadata = {}
        mime = str(metadata.get("image_type") or metadata.get("mime_type") or "application/octet-stream")
        return PreviewImage(
            _opt_str(metadata.get("prompt_id")),
            _opt_str(metadata.get("node_id")),
            mime,
            bytes(frame[end:]),
            dict(metadata),
            BINARY_PREVIEW_WITH_METADATA,
        )
    if event_type == BINARY_TEXT:
        if len(frame) < 8:
            raise MessageParseError("text frame has no node id length")
        (length,) = struct.unpack_from(">I", frame, 4)
        end = 8 + length
        if len(frame) < end:
            raise MessageParseError("text frame is shorter than its node id")
        node_id = bytes(frame[8:end]).decode("utf-8", "replace")
        return ProgressText(node_id, bytes(frame[end:]).decode("utf-8", "replace"))
    return UnknownBinary(event_type, bytes(frame[4:]))


def encode_preview(
    image: bytes, *, mime_type: str = "image/jpeg", metadata: Mapping[str, Any] | None = None
) -> bytes:
    """Build a binary preview frame (type 4 when ``metadata`` is given, else type 1).

    The inverse of :func:`parse_binary`, used by the fake server and tests.
    """
    if metadata is None:
        image_type = 2 if mime_type == "image/png" else 1
        return struct.pack(">II", BINARY_PREVIEW_IMAGE, image_type) + image
    blob = json.dumps(dict(metadata)).encode("utf-8")
    return struct.pack(">II", BINARY_PREVIEW_WITH_METADATA, len(blob)) + blob + image
