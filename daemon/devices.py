"""Device choice and honest memory figures for the daemon.

Owns: turning ``--device`` (``auto`` | ``cpu`` | ``mps`` | ``cuda`` | ``cuda:N``) into a real
torch device with a human-readable reason, reading the device's memory for status and scaling,
and giving each pool worker its own execution context (a CUDA stream on GPU).

Memory is always whole-device: on CUDA ``torch.cuda.mem_get_info`` (which includes every other
process on the card, e.g. ComfyUI), never this process's allocator counters (the old daemon's
bug). On CPU/MPS the system RAM from psutil is reported in the VRAM fields, and the device label
says so. Functions are thread-safe and cheap; called from the event loop and worker threads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil
import torch

from daemon.config import ConfigError

log = logging.getLogger("luna.daemon.devices")

T = TypeVar("T")
GIB = 1024**3
PREFERRED_CUDA_INDEX = 1  # the intended render box: ComfyUI on cuda:0, the shared daemon on cuda:1


@dataclass(frozen=True)
class DeviceChoice:
    """The device the daemon runs on and why."""

    device: torch.device
    label: str  # shown as status "device", e.g. "cuda:1" or "cpu (system RAM reported as VRAM)"
    reason: str  # one line for the log: why this device
    name: str  # hardware name, e.g. "NVIDIA GeForce RTX 3060" or "cpu"


@dataclass(frozen=True)
class MemoryInfo:
    """Whole-device memory in bytes (free includes what other processes leave)."""

    free_bytes: int
    total_bytes: int
    source: str  # "cuda.mem_get_info" | "system RAM (psutil)"

    @property
    def used_bytes(self) -> int:
        return max(0, self.total_bytes - self.free_bytes)


def choose_device(requested: str = "auto") -> DeviceChoice:
    """Resolve the configured device; a device that does not exist is a ConfigError.

    ``auto``: ``cuda:1`` when there are two or more GPUs (the secondary card the daemon is meant for), else
    ``cuda:0``, else ``mps``, else ``cpu``.
    """
    requested = (requested or "auto").lower()
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested == "auto":
        if cuda_count > PREFERRED_CUDA_INDEX:
            return _cuda_choice(
                PREFERRED_CUDA_INDEX, f"auto: {cuda_count} CUDA devices, using the secondary one"
            )
        if cuda_count == 1:
            return _cuda_choice(0, "auto: only one CUDA device (cuda:1 not present)")
        if mps_ok:
            return _ram_choice(torch.device("mps"), "auto: no CUDA device, Apple MPS available")
        return _ram_choice(torch.device("cpu"), "auto: no CUDA or MPS device")
    if requested.startswith("cuda"):
        if cuda_count == 0:
            raise ConfigError(
                "daemon.device",
                f"{requested} requested but CUDA is not available (CPU-only torch build or no GPU)",
            )
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= cuda_count:
            raise ConfigError(
                "daemon.device", f"{requested} requested but only {cuda_count} CUDA device(s) exist"
            )
        return _cuda_choice(index, "configured")
    if requested == "mps":
        if not mps_ok:
            raise ConfigError("daemon.device", "mps requested but MPS is not available")
        return _ram_choice(torch.device("mps"), "configured")
    if requested == "cpu":
        return _ram_choice(torch.device("cpu"), "configured")
    raise ConfigError("daemon.device", f"unknown device {requested!r}")


def _cuda_choice(index: int, reason: str) -> DeviceChoice:
    device = torch.device("cuda", index)
    return DeviceChoice(
        device=device, label=str(device), reason=reason, name=torch.cuda.get_device_name(index)
    )


def _ram_choice(device: torch.device, reason: str) -> DeviceChoice:
    return DeviceChoice(
        device=device, label=f"{device.type} (system RAM reported as VRAM)", reason=reason, name=device.type
    )


def memory_info(device: torch.device) -> MemoryInfo:
    """Free/total memory of the whole device (CUDA) or of the machine (CPU, MPS)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return MemoryInfo(int(free), int(total), "cuda.mem_get_info")
    vm = psutil.virtual_memory()
    return MemoryInfo(int(vm.available), int(vm.total), "system RAM (psutil)")


def supports_precision(device: torch.device, precision: str) -> tuple[bool, str]:
    """Whether ``precision`` runs natively on ``device``; (ok, explanation)."""
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    return True, ""


class WorkerRunner:
    """Runs jobs for ONE pool worker on its own thread, inside its own CUDA stream on GPU.

    Created on the worker's thread (the first job) so the stream belongs to that worker; jobs
    on other workers overlap on the GPU instead of serialising on the default stream.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._stream: torch.cuda.Stream | None = None

    def run(self, job: Callable[[], T]) -> T:
        if self.device.type != "cuda":
            return job()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(self._stream):
            result = job()
        # Results are handed to the event loop thread: make sure the GPU work is finished.
        self._stream.synchronize()
        return result


def peak_memory_meter(device: torch.device) -> Callable[[], contextlib.AbstractContextManager[list[int]]]:
    """A context-manager factory measuring a job's peak extra device memory (CUDA only).

    Yields a list that receives one int (bytes) on exit; empty on devices without allocator
    statistics. Only meaningful when the job runs alone (the pool only records it then).
    """

    @contextlib.contextmanager
    def measure():
        box: list[int] = []
        if device.type != "cuda":
            yield box
            return
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield box
        finally:
            box.append(max(0, torch.cuda.max_memory_allocated(device) - before))

    return measure
