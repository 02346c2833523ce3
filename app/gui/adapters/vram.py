"""Adapter that feeds the VRAM history from the daemon status and the instances' rows, and ticks.

Owns a :class:`app.services.vram_history.VramHistory` and a 1 Hz ``QTimer``; emits ``updated``
once per tick (and on the first sample of a series) so the plot redraws at a steady rate even
while a source is silent (its line then runs into a gap). GUI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.services.instances_monitor import InstanceRow
from app.services.vram_history import DAEMON_SERIES, VramHistory, is_system_memory


class VramAdapter(QObject):
    """Signals: ``updated()``, ``system_memory_changed(bool)``."""

    updated = Signal()
    system_memory_changed = Signal(bool)

    def __init__(self, history: VramHistory, *, tick_ms: int = 1000, parent: QObject | None = None):
        super().__init__(parent)
        self.history = history
        self.timer = QTimer(self)
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self.updated)
        self._system_memory: bool | None = None

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def on_status(self, status: Any) -> None:
        first = DAEMON_SERIES not in self.history.names
        self.history.add(DAEMON_SERIES, status.vram_used_gb, status.vram_total_gb)
        system = is_system_memory(status)
        if system != self._system_memory:
            self._system_memory = system
            self.system_memory_changed.emit(system)
        if first:
            self.updated.emit()

    def on_rows(self, rows: Sequence[InstanceRow]) -> None:
        for row in rows:
            first = row.name not in self.history.names
            used = row.vram_used_gb if row.health == "healthy" else None
            self.history.add(row.name, used, row.vram_total_gb)
            if first:
                self.updated.emit()
