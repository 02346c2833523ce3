"""Data returned by the ComfyUI client: history entries, outputs, stats, queue, job results.

Owns the parsing of ComfyUI's REST replies (``/history/{id}``, ``/queue``, ``/system_stats``,
``/upload/image``) into frozen dataclasses, tolerant of the version drift in the fact sheet
(``status`` may be null, outputs under ``images``/``gifs``/``audio``/…, ``type`` read per item).
Pure data, any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.comfy.errors import ExecutionFailed, JobFailed, JobInterrupted, NodeReason


@dataclass(frozen=True)
class OutputRef:
    """One output file as ComfyUI lists it (``/view`` takes exactly these three fields)."""

    node_id: str
    filename: str
    subfolder: str = ""
    type: str = "output"
    media_key: str = "images"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputFile:
    """A downloaded output: where it came from, its bytes and MIME type."""

    ref: OutputRef
    data: bytes = field(repr=False)
    mime_type: str

    @property
    def filename(self) -> str:
        return self.ref.filename

    @property
    def node_id(self) -> str:
        return self.ref.node_id


def output_refs(outputs: Mapping[str, Any]) -> list[OutputRef]:
    """Every downloadable file in a history ``outputs`` (or ``executed.output``) mapping."""
    refs: list[OutputRef] = []
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, Mapping):
            continue
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    extra = {
                        k: v
                        for k, v in item.items()
                        if k not in ("filename", "subfolder", "type", "fullpath")
                    }
                    refs.append(
                        OutputRef(
                            str(node_id),
                            item["filename"],
                            str(item.get("subfolder") or ""),
                            str(item.get("type") or "output"),
                            str(key),
                            extra,
                        )
                    )
    return refs


@dataclass(frozen=True)
class HistoryEntry:
    """One ``/history/{id}`` entry: outputs, status and the recorded execution messages."""

    prompt_id: str
    outputs: Mapping[str, Any]
    status_str: str | None
    completed: bool | None
    messages: tuple[tuple[str, Mapping[str, Any]], ...]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, prompt_id: str, entry: Mapping[str, Any]) -> HistoryEntry:
        status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
        messages = []
        for message in status.get("messages") or ():
            if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], Mapping):
                messages.append((str(message[0]), dict(message[1])))
        outputs = entry.get("outputs") if isinstance(entry.get("outputs"), Mapping) else {}
        return cls(
            prompt_id,
            dict(outputs),
            status.get("status_str"),
            status.get("completed"),
            tuple(messages),
            dict(entry),
        )

    @property
    def execution_started(self) -> bool:
        return any(name == "execution_start" for name, _ in self.messages)

    def error_for(self, prompt_id: str, instance: str | None) -> JobFailed | None:
        """The failure recorded in this entry, or None when it succeeded (or says nothing)."""
        for name, data in self.messages:
            if name == "execution_error":
                return ExecutionFailed(
                    prompt_id=prompt_id,
                    node_id=_opt(data.get("node_id")),
                    node_type=_opt(data.get("node_type")),
                    exception_type=str(data.get("exception_type") or "Exception"),
                    exception_message=str(data.get("exception_message") or ""),
                    traceback=tuple(str(x) for x in data.get("traceback") or ()),
                    executed=tuple(str(x) for x in data.get("executed") or ()),
                    current_inputs=data.get("current_inputs")
                    if isinstance(data.get("current_inputs"), Mapping)
                    else {},
                    instance=instance,
                )
            if name == "execution_interrupted":
                return JobInterrupted(
                    prompt_id=prompt_id,
                    node_id=_opt(data.get("node_id")),
                    node_type=_opt(data.get("node_type")),
                    executed=tuple(str(x) for x in data.get("executed") or ()),
                    instance=instance,
                )
        if self.status_str == "error":
            return ExecutionFailed(
                prompt_id=prompt_id,
                node_id=None,
                node_type=None,
                exception_type="Error",
                exception_message="ComfyUI recorded the job as failed",
                instance=instance,
            )
        return None


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class DeviceStats:
    """One torch device from ``/system_stats`` (bytes)."""

    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int = 0
    torch_vram_free: int = 0


@dataclass(frozen=True)
class SystemStats:
    """``/system_stats``: versions and per-device VRAM; ``devices[0]`` is the one ComfyUI uses."""

    comfyui_version: str | None
    python_version: str | None
    pytorch_version: str | None
    os: str | None
    ram_total: int | None
    ram_free: int | None
    devices: tuple[DeviceStats, ...]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> SystemStats:
        system = body.get("system") if isinstance(body.get("system"), Mapping) else {}
        devices = []
        for device in body.get("devices") or ():
            if not isinstance(device, Mapping):
                continue
            devices.append(
                DeviceStats(
                    name=str(device.get("name", "")),
                    type=str(device.get("type", "")),
                    index=device.get("index") if isinstance(device.get("index"), int) else None,
                    vram_total=int(device.get("vram_total") or 0),
                    vram_free=int(device.get("vram_free") or 0),
                    torch_vram_total=int(device.get("torch_vram_total") or 0),
                    torch_vram_free=int(device.get("torch_vram_free") or 0),
                )
            )
        return cls(
            _opt(system.get("comfyui_version")),
            _opt(system.get("python_version")),
            _opt(system.get("pytorch_version")),
            _opt(system.get("os")),
            system.get("ram_total"),
            system.get("ram_free"),
            tuple(devices),
            dict(body),
        )


@dataclass(frozen=True)
class QueueItem:
    """One ``/queue`` item: ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""

    number: float
    prompt_id: str
    extra_data: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class QueueSnapshot:
    """``GET /queue``; ``pending`` sorted by priority (the server sends a raw heap)."""

    running: tuple[QueueItem, ...]
    pending: tuple[QueueItem, ...]

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> QueueSnapshot:
        def items(raw: Any) -> list[QueueItem]:
            result = []
            for item in raw or ():
                if isinstance(item, (list, tuple)) and len(item) >= 2:
                    extra = item[3] if len(item) > 3 and isinstance(item[3], Mapping) else {}
                    number = item[0] if isinstance(item[0], (int, float)) else 0
                    result.append(QueueItem(float(number), str(item[1]), dict(extra)))
            return result

        pending = sorted(items(body.get("queue_pending")), key=lambda item: item.number)
        return cls(tuple(items(body.get("queue_running"))), tuple(pending))

    def contains(self, prompt_id: str) -> str | None:
        """``"running"``, ``"pending"`` or None."""
        if any(item.prompt_id == prompt_id for item in self.running):
            return "running"
        if any(item.prompt_id == prompt_id for item in self.pending):
            return "pending"
        return None


@dataclass(frozen=True)
class UploadedImage:
    """``/upload/image`` reply: reference it in ``LoadImage`` as :attr:`reference`."""

    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


@dataclass(frozen=True)
class JobTimings:
    """Seconds, measured on the client's monotonic clock."""

    queued: float  # submit -> execution_start (0 when the start was not seen)
    running: float  # execution_start -> finished
    fetching: float  # finished -> outputs in hand
    total: float  # submit -> outputs in hand


@dataclass(frozen=True)
class JobResult:
    """Everything about one finished job: id, where it ran, timings, files, warnings."""

    prompt_id: str
    instance: str
    files: tuple[OutputFile, ...]
    outputs: Mapping[str, Any]
    timings: JobTimings
    warnings: tuple[NodeReason, ...] = ()
    cached_nodes: tuple[str, ...] = ()

    @property
    def images(self) -> tuple[OutputFile, ...]:
        return tuple(f for f in self.files if f.mime_type.startswith("image/"))

    @property
    def warning_messages(self) -> tuple[str, ...]:
        return tuple(reason.describe() for reason in self.warnings)
