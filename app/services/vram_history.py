"""Rolling memory history for the dashboard's VRAM graph: one series per source, gaps kept.

Owns fixed-size numpy ring buffers of ``(timestamp, used GiB)`` samples per series (the daemon,
each ComfyUI instance). :meth:`VramHistory.window` returns ``x = t - now`` (seconds, −window…0)
and ``y`` with a NaN wherever two consecutive samples are further apart than ``gap_after``
seconds (the source was silent), so the plot draws a visible gap with ``connect="finite"``.
Samples are filtered by timestamp, not by count. The clock is injected (``time.monotonic`` by
default) so tests run without Qt or real time. Pure Python + numpy; used on the GUI loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: The series name of the daemon's own memory in the history and the plot.
DAEMON_SERIES = "daemon"


def is_system_memory(status: object) -> bool:
    """True when the daemon's ``vram_*`` figures are system RAM (it runs on the CPU); the
    memory source is only in the first status after connecting, the device in every one."""
    static = getattr(status, "static", None)
    source = str(getattr(static, "memory_source", None) or "")
    device = str(getattr(status, "device", "") or "").lower()
    return device.startswith("cpu") or "system" in source.lower()


@dataclass(frozen=True)
class SeriesWindow:
    """What one curve draws now: x in seconds before now, y in GiB (NaN = gap)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    total_gb: float | None


class _Ring:
    """Preallocated samples of one series; the oldest is overwritten when full."""

    def __init__(self, capacity: int):
        self.t = np.full(capacity, -np.inf)
        self.y = np.full(capacity, np.nan)
        self.next = 0
        self.count = 0
        self.total_gb: float | None = None

    def append(self, t: float, y: float) -> None:
        self.t[self.next] = t
        self.y[self.next] = y
        self.next = (self.next + 1) % len(self.t)
        self.count = min(self.count + 1, len(self.t))

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < len(self.t):
            return self.t[: self.count], self.y[: self.count]
        return np.roll(self.t, -self.next), np.roll(self.y, -self.next)


class VramHistory:
    """Per-series rolling memory samples (see module docstring)."""

    def __init__(
        self,
        *,
        window_seconds: float = 90.0,
        gap_after: float = 3.0,
        capacity: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.window_seconds = window_seconds
        self.gap_after = gap_after
        self._capacity = capacity
        self._clock = clock
        self._series: dict[str, _Ring] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._series)

    def add(self, name: str, used_gb: float | None, total_gb: float | None = None, at: float | None = None):
        """Record one sample (None = the source answered without a figure: a gap)."""
        ring = self._series.get(name)
        if ring is None:
            ring = self._series[name] = _Ring(self._capacity)
        if total_gb is not None and math.isfinite(total_gb):
            ring.total_gb = total_gb
        ring.append(self._clock() if at is None else at, math.nan if used_gb is None else float(used_gb))

    def window(self, name: str, now: float | None = None) -> SeriesWindow:
        """The last ``window_seconds`` of one series, with NaN where samples were missing."""
        now = self._clock() if now is None else now
        ring = self._series.get(name)
        if ring is None:
            return SeriesWindow(name, np.empty(0), np.empty(0), None)
        t, y = ring.ordered()
        keep = t >= now - self.window_seconds
        # Keep one sample before the window so the curve enters from the left edge.
        first = int(np.argmax(keep)) if keep.any() else len(t)
        start = max(0, first - 1)
        t, y = t[start:], y[start:]
        if len(t) == 0:
            return SeriesWindow(name, np.empty(0), np.empty(0), ring.total_gb)
        gaps = np.flatnonzero(np.diff(t) > self.gap_after)
        if len(gaps) or now - t[-1] > self.gap_after:
            # A NaN point just after each silent stretch starts breaks the line there.
            t = np.insert(t, gaps + 1, t[gaps] + self.gap_after / 2)
            y = np.insert(y, gaps + 1, np.nan)
            if now - t[-1] > self.gap_after:
                t = np.append(t, t[-1] + self.gap_after / 2)
                y = np.append(y, np.nan)
        return SeriesWindow(name, t - now, y, ring.total_gb)

    def max_total_gb(self) -> float | None:
        totals = [ring.total_gb for ring in self._series.values() if ring.total_gb]
        return max(totals) if totals else None
