"""Scaling events on a timeline under the VRAM graph, plus a readable list of the latest ones
(``list``, which the dashboard places beside the cards).

Each :class:`daemon.wire.status.ScalingEvent` becomes a marker on a pyqtgraph strip sharing the
graph's time axis (▲ scale_up, ▼ scale_down; VAE and CLIP on their own rows) and a line in the
list (time, event, pool, worker id, active workers, VRAM available). Markers older than the
window are dropped on :meth:`refresh`. The clock is injected; GUI thread; no I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyqtgraph as pg
from PySide6.QtWidgets import QListWidget, QVBoxLayout, QWidget

POOL_ROWS = {"vae": 1.0, "clip": 0.0}


@dataclass(frozen=True)
class TimelineEntry:
    """One scaling event and when it arrived (monotonic clock)."""

    at: float
    wall: float
    event: Any


class ScalingTimeline(QWidget):
    """Timeline strip + event list (see module docstring)."""

    def __init__(
        self,
        *,
        window_seconds: float = 90.0,
        max_listed: int = 200,
        clock: Callable[[], float] = time.monotonic,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setObjectName("scalingTimeline")
        self.window_seconds = window_seconds
        self._clock = clock
        self.entries: deque[TimelineEntry] = deque(maxlen=max_listed)
        self.strip = pg.PlotWidget(background="#1e1e1e")
        self.strip.setMinimumHeight(90)
        self.strip.setMaximumHeight(120)
        item = self.strip.getPlotItem()
        item.hideButtons()
        item.setMouseEnabled(x=False, y=False)
        item.enableAutoRange(x=False, y=False)
        item.setXRange(-window_seconds, 0, padding=0)
        item.setYRange(-0.6, 1.6, padding=0)
        item.getAxis("left").setTicks([[(row, name.upper()) for name, row in POOL_ROWS.items()]])
        item.setLabel("bottom", "scaling events", units="s")
        self.ups = pg.ScatterPlotItem(symbol="t1", size=12, brush=pg.mkBrush("#81c784"), pen=None)
        self.downs = pg.ScatterPlotItem(symbol="t", size=12, brush=pg.mkBrush("#e57373"), pen=None)
        item.addItem(self.ups)
        item.addItem(self.downs)
        # The list is owned and filled here but placed by the dashboard (beside the cards).
        self.list = QListWidget()
        self.list.setObjectName("scalingEventList")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.strip)

    def on_scaling(self, event: Any) -> None:
        entry = TimelineEntry(self._clock(), time.time(), event)
        self.entries.append(entry)
        self.list.insertItem(0, describe(entry))
        while self.list.count() > (self.entries.maxlen or 200):
            self.list.takeItem(self.list.count() - 1)
        self.refresh()

    def refresh(self) -> None:
        now = self._clock()
        ups: list[tuple[float, float]] = []
        downs: list[tuple[float, float]] = []
        for entry in self.entries:
            age = entry.at - now
            if age < -self.window_seconds:
                continue
            point = (age, POOL_ROWS.get(entry.event.pool, 0.5))
            (ups if entry.event.event == "scale_up" else downs).append(point)
        self.ups.setData(pos=ups)
        self.downs.setData(pos=downs)


def describe(entry: TimelineEntry) -> str:
    event = entry.event
    stamp = time.strftime("%H:%M:%S", time.localtime(entry.wall))
    arrow = "▲" if event.event == "scale_up" else "▼"
    return (
        f"{stamp}  {arrow} {event.event}  {event.pool.upper()} worker #{event.worker_id}  "
        f"→ {event.active_workers} active, {event.vram_available_gb:.2f} GiB available"
    )
