"""Typed messages of the daemon's status WebSocket (``ws://127.0.0.1:19284``).

Owns the shape of every message on that socket, both ways: the daemon builds a
:class:`DaemonStatus` and sends ``to_json()``; clients (the app's status feed, the dashboard, the
Narrates health gate, the ComfyUI Daemon Status node) call :func:`parse_status_message`, which is
strict about what it needs and raises :class:`StatusMessageError` on anything malformed, and
tolerant of fields it does not know (a newer daemon may add extras).

Messages (``daemon/PROTOCOL.md`` §Status WebSocket):

* ``{"type":"status","data":{…}}`` — the core fields exactly (``status``, ``version``,
  ``device``, ``precision``, ``uptime_seconds``, ``total_requests``, ``vram_used_gb``,
  ``vram_total_gb``, ``vae_pool``, ``clip_pool``), then ``sampled_at`` and the live extras. The
  static facts (effective config, pid, ports, protocol version, device name, memory source) are
  only in the first status after connecting and in the reply to ``get_status``, so the 1 Hz
  message stays small: :attr:`DaemonStatus.static` is None on the others.
* ``{"type":"scaling","data":{"event","pool","worker_id","active_workers","vram_available_gb"}}``.
* ``{"type":"error","data":{"message":…}}`` — the daemon's answer to a bad client message.
* client → daemon: ``{"type":"get_status"}``.

Pure data and functions (stdlib only), safe on any thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATUS = "status"
SCALING = "scaling"
ERROR = "error"
GET_STATUS = "get_status"

#: The core fields of a status message, in this order (the first keys of ``data``): the fields the
#: Luna Narrates server and the Luna Collection nodes already read from the original daemon.
CORE_FIELDS = (
    "status",
    "version",
    "device",
    "precision",
    "uptime_seconds",
    "total_requests",
    "vram_used_gb",
    "vram_total_gb",
    "vae_pool",
    "clip_pool",
)
#: The core fields of one pool.
CORE_POOL_FIELDS = ("type", "active_workers", "queue_depth", "total_requests")
#: A parsed message is refused beyond this size or nesting (a status is a few KiB).
MAX_MESSAGE_BYTES = 1 << 20
MAX_DEPTH = 32


class StatusMessageError(ValueError):
    """A status-WebSocket message is not valid JSON or not the documented shape; says which field."""


# ---------------------------------------------------------------------------------------------
# The messages


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles over a pool's recent requests, in milliseconds (None: no samples yet)."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None

    def to_data(self) -> dict[str, Any]:
        return {"count": self.count, "p50": self.p50, "p95": self.p95}


@dataclass(frozen=True)
class PoolStatus:
    """One worker pool (``vae_pool`` / ``clip_pool``): the four core fields, then extras."""

    type: str
    active_workers: int
    queue_depth: int
    total_requests: int
    worker_ids: tuple[int, ...] = ()
    mode: str = ""
    min_workers: int = 0
    max_workers: int = 0
    busy_workers: int = 0
    completed: int = 0
    failed: int = 0
    worker_footprint_gb: float = 0.0
    footprint_measured: bool = False
    scale_up_blocked: str | None = None
    latency_ms: Percentiles = field(default_factory=Percentiles)
    run_ms: Percentiles = field(default_factory=Percentiles)

    def to_data(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "active_workers": self.active_workers,
            "queue_depth": self.queue_depth,
            "total_requests": self.total_requests,
            "worker_ids": list(self.worker_ids),
            "mode": self.mode,
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
            "busy_workers": self.busy_workers,
            "completed": self.completed,
            "failed": self.failed,
            "worker_footprint_gb": self.worker_footprint_gb,
            "footprint_measured": self.footprint_measured,
            "scale_up_blocked": self.scale_up_blocked,
            "latency_ms": self.latency_ms.to_data(),
            "run_ms": self.run_ms.to_data(),
        }


@dataclass(frozen=True)
class ModelState:
    """One model of a model set: ``not_loaded`` / ``loading`` / ``loaded`` / ``failed``, and once
    loaded the dtype it really computes in (a CPU without native bf16 runs fp32)."""

    state: str
    dtype: str | None = None
    device: str | None = None
    error: str | None = None

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state}
        for key in ("dtype", "device", "error"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


@dataclass(frozen=True)
class PromptCacheStats:
    """The daemon's CLIP prompt cache."""

    entries: int = 0
    max_entries: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    hit_rate: float | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": self.hit_rate,
        }


@dataclass(frozen=True)
class TrafficStats:
    """What the TCP port carried since start: requests per op, errors per code, bytes through the
    socket and through shared memory, open connections."""

    requests_by_op: Mapping[str, int] = field(default_factory=dict)
    errors_by_code: Mapping[str, int] = field(default_factory=dict)
    connections_open: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    shm_bytes_in: int = 0
    shm_bytes_out: int = 0

    def to_data(self) -> dict[str, Any]:
        return {
            "requests_by_op": dict(self.requests_by_op),
            "errors_by_code": dict(self.errors_by_code),
            "connections_open": self.connections_open,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "shm_bytes_in": self.shm_bytes_in,
            "shm_bytes_out": self.shm_bytes_out,
        }


@dataclass(frozen=True)
class StaticFacts:
    """Facts that do not change while the daemon runs; sent on connect and in ``get_status``."""

    pid: int
    protocol_version: int
    protocol_port: int | None
    ws_port: int | None
    device_name: str
    memory_source: str
    config: Mapping[str, Any]

    def to_data(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "protocol_version": self.protocol_version,
            "ports": {"protocol": self.protocol_port, "ws": self.ws_port},
            "device_name": self.device_name,
            "memory_source": self.memory_source,
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class DaemonStatus:
    """One ``status`` message: the core fields, the sample time, live extras, static facts."""

    status: str  # "ok" | "shutting_down"
    version: str
    device: str
    precision: str
    uptime_seconds: float
    total_requests: int
    vram_used_gb: float
    vram_total_gb: float
    vae_pool: PoolStatus
    clip_pool: PoolStatus
    #: when the daemon took this sample (Unix time, seconds)
    sampled_at: float
    vram_free_gb: float | None = None
    models: Mapping[str, Mapping[str, ModelState]] = field(default_factory=dict)
    prompt_cache: PromptCacheStats = field(default_factory=PromptCacheStats)
    traffic: TrafficStats = field(default_factory=TrafficStats)
    ws_clients: int = 0
    static: StaticFacts | None = None

    def pools(self) -> tuple[PoolStatus, PoolStatus]:
        return self.vae_pool, self.clip_pool

    def without_static(self) -> DaemonStatus:
        """The 1 Hz form of this status."""
        return DaemonStatus(**{**self.__dict__, "static": None})

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "version": self.version,
            "device": self.device,
            "precision": self.precision,
            "uptime_seconds": self.uptime_seconds,
            "total_requests": self.total_requests,
            "vram_used_gb": self.vram_used_gb,
            "vram_total_gb": self.vram_total_gb,
            "vae_pool": self.vae_pool.to_data(),
            "clip_pool": self.clip_pool.to_data(),
            "sampled_at": self.sampled_at,
            "vram_free_gb": self.vram_free_gb,
            "models": {
                name: {kind: state.to_data() for kind, state in kinds.items()}
                for name, kinds in self.models.items()
            },
            "prompt_cache": self.prompt_cache.to_data(),
            "traffic": self.traffic.to_data(),
            "ws_clients": self.ws_clients,
        }
        if self.static is not None:
            data.update(self.static.to_data())
        return data

    def to_json(self) -> str:
        return json.dumps({"type": STATUS, "data": self.to_data()}, separators=(",", ":"))


@dataclass(frozen=True)
class ScalingEvent:
    """One ``scaling`` message: a pool added or removed a worker (the original daemon's fields, exactly)."""

    event: str  # "scale_up" | "scale_down"
    pool: str  # "vae" | "clip"
    worker_id: int
    active_workers: int
    vram_available_gb: float

    def to_data(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "pool": self.pool,
            "worker_id": self.worker_id,
            "active_workers": self.active_workers,
            "vram_available_gb": self.vram_available_gb,
        }

    def to_json(self) -> str:
        return json.dumps({"type": SCALING, "data": self.to_data()}, separators=(",", ":"))


@dataclass(frozen=True)
class StatusErrorReply:
    """The daemon's ``error`` message: what a client sent was not understood or was refused."""

    message: str

    def to_json(self) -> str:
        return json.dumps({"type": ERROR, "data": {"message": self.message}}, separators=(",", ":"))


StatusMessage = DaemonStatus | ScalingEvent | StatusErrorReply


def get_status_request() -> str:
    """The client's request for an immediate full status."""
    return json.dumps({"type": GET_STATUS})


# ---------------------------------------------------------------------------------------------
# Strict parsing


class _Fields:
    """Typed reads from one JSON object; every error names the field's path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise StatusMessageError(f"{where} must be an object, got {type(data).__name__}")
        self.data = data
        self.where = where

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise StatusMessageError(f"{self.where}.{key} is missing")
            return None
        return self.data[key]

    def text(self, key: str, *, required: bool = True, default: str | None = None) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return default
        if not isinstance(value, str):
            raise StatusMessageError(f"{self.where}.{key} must be a string, got {value!r:.60}")
        return value

    def integer(self, key: str, *, required: bool = True, default: int | None = 0) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StatusMessageError(f"{self.where}.{key} must be a non-negative integer, got {value!r:.60}")
        return value

    def number(self, key: str, *, required: bool = True, default: float | None = 0.0) -> Any:
        value = self._get(key, required)
        if value is None and not required:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise StatusMessageError(f"{self.where}.{key} must be a finite number, got {value!r:.60}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise StatusMessageError(f"{self.where}.{key} must be true or false, got {value!r:.60}")
        return value

    def child(self, key: str, *, required: bool = True) -> _Fields | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        return _Fields(value, f"{self.where}.{key}")

    def counts(self, key: str) -> dict[str, int]:
        sub = self.child(key, required=False)
        if sub is None:
            return {}
        return {name: sub.integer(name) for name in sub.data}


def _percentiles(fields: _Fields | None) -> Percentiles:
    if fields is None:
        return Percentiles()
    return Percentiles(
        count=fields.integer("count", required=False),
        p50=fields.number("p50", required=False, default=None),
        p95=fields.number("p95", required=False, default=None),
    )


def _pool(fields: _Fields) -> PoolStatus:
    ids = fields.data.get("worker_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise StatusMessageError(f"{fields.where}.worker_ids must be a list of integers")
    return PoolStatus(
        type=fields.text("type"),
        active_workers=fields.integer("active_workers"),
        queue_depth=fields.integer("queue_depth"),
        total_requests=fields.integer("total_requests"),
        worker_ids=tuple(ids),
        mode=fields.text("mode", required=False, default=""),
        min_workers=fields.integer("min_workers", required=False),
        max_workers=fields.integer("max_workers", required=False),
        busy_workers=fields.integer("busy_workers", required=False),
        completed=fields.integer("completed", required=False),
        failed=fields.integer("failed", required=False),
        worker_footprint_gb=fields.number("worker_footprint_gb", required=False),
        footprint_measured=fields.flag("footprint_measured"),
        scale_up_blocked=fields.text("scale_up_blocked", required=False),
        latency_ms=_percentiles(fields.child("latency_ms", required=False)),
        run_ms=_percentiles(fields.child("run_ms", required=False)),
    )


def _models(fields: _Fields | None) -> dict[str, dict[str, ModelState]]:
    if fields is None:
        return {}
    out: dict[str, dict[str, ModelState]] = {}
    for set_name in fields.data:
        kinds = fields.child(set_name)
        assert kinds is not None
        out[set_name] = {}
        for kind in kinds.data:
            model = kinds.child(kind)
            assert model is not None
            out[set_name][kind] = ModelState(
                state=model.text("state"),
                dtype=model.text("dtype", required=False),
                device=model.text("device", required=False),
                error=model.text("error", required=False),
            )
    return out


def _cache(fields: _Fields | None) -> PromptCacheStats:
    if fields is None:
        return PromptCacheStats()
    return PromptCacheStats(
        entries=fields.integer("entries", required=False),
        max_entries=fields.integer("max_entries", required=False),
        hits=fields.integer("hits", required=False),
        misses=fields.integer("misses", required=False),
        evictions=fields.integer("evictions", required=False),
        hit_rate=fields.number("hit_rate", required=False, default=None),
    )


def _traffic(fields: _Fields | None) -> TrafficStats:
    if fields is None:
        return TrafficStats()
    return TrafficStats(
        requests_by_op=fields.counts("requests_by_op"),
        errors_by_code=fields.counts("errors_by_code"),
        connections_open=fields.integer("connections_open", required=False),
        bytes_in=fields.integer("bytes_in", required=False),
        bytes_out=fields.integer("bytes_out", required=False),
        shm_bytes_in=fields.integer("shm_bytes_in", required=False),
        shm_bytes_out=fields.integer("shm_bytes_out", required=False),
    )


def _static(fields: _Fields) -> StaticFacts | None:
    if "config" not in fields.data:
        return None
    config = fields.child("config")
    ports = fields.child("ports")
    assert config is not None and ports is not None
    return StaticFacts(
        pid=fields.integer("pid"),
        protocol_version=fields.integer("protocol_version"),
        protocol_port=ports.integer("protocol", required=False, default=None),
        ws_port=ports.integer("ws", required=False, default=None),
        device_name=fields.text("device_name"),
        memory_source=fields.text("memory_source"),
        config=config.data,
    )


def parse_status_data(data: Any) -> DaemonStatus:
    """A :class:`DaemonStatus` from a status message's ``data`` (or the ``status`` op's result)."""
    fields = _Fields(data, "status")
    pools = []
    for key in ("vae_pool", "clip_pool"):
        pool = fields.child(key)
        assert pool is not None
        pools.append(_pool(pool))
    return DaemonStatus(
        status=fields.text("status"),
        version=fields.text("version"),
        device=fields.text("device"),
        precision=fields.text("precision"),
        uptime_seconds=fields.number("uptime_seconds"),
        total_requests=fields.integer("total_requests"),
        vram_used_gb=fields.number("vram_used_gb"),
        vram_total_gb=fields.number("vram_total_gb"),
        vae_pool=pools[0],
        clip_pool=pools[1],
        sampled_at=fields.number("sampled_at"),
        vram_free_gb=fields.number("vram_free_gb", required=False, default=None),
        models=_models(fields.child("models", required=False)),
        prompt_cache=_cache(fields.child("prompt_cache", required=False)),
        traffic=_traffic(fields.child("traffic", required=False)),
        ws_clients=fields.integer("ws_clients", required=False),
        static=_static(fields),
    )


def _parse_scaling(data: Any) -> ScalingEvent:
    fields = _Fields(data, "scaling")
    event = fields.text("event")
    if event not in ("scale_up", "scale_down"):
        raise StatusMessageError(f"scaling.event must be scale_up or scale_down, got {event!r:.40}")
    return ScalingEvent(
        event=event,
        pool=fields.text("pool"),
        worker_id=fields.integer("worker_id"),
        active_workers=fields.integer("active_workers"),
        vram_available_gb=fields.number("vram_available_gb"),
    )


def _check_depth(text: str) -> None:
    """Refuse deep nesting before json.loads, which would recurse (and raise RecursionError)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    raise StatusMessageError(f"message nests deeper than {MAX_DEPTH} levels")
        elif char in "]}":
            depth -= 1


def loads_bounded(raw: str | bytes) -> Any:
    """``json.loads`` for untrusted WebSocket text: size- and depth-limited, typed errors only."""
    if isinstance(raw, bytes | bytearray | memoryview):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise StatusMessageError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise StatusMessageError("message is not UTF-8 text") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise StatusMessageError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    _check_depth(raw)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise StatusMessageError(f"message is not valid JSON: {exc}") from None


def parse_status_message(raw: str | bytes) -> StatusMessage:
    """Parse one message the daemon sent on the status WebSocket; :class:`StatusMessageError`
    names what is wrong. Unknown message types are errors too (the feed logs and skips them)."""
    message = loads_bounded(raw)
    if not isinstance(message, dict):
        raise StatusMessageError("message must be a JSON object")
    kind = message.get("type")
    data = message.get("data")
    if kind == STATUS:
        return parse_status_data(data)
    if kind == SCALING:
        return _parse_scaling(data)
    if kind == ERROR:
        return StatusErrorReply(message=_Fields(data, "error").text("message"))
    raise StatusMessageError(f"unknown message type {kind!r:.40}")
