"""The live memory graph: the daemon's used memory and one series per ComfyUI instance.

Built once over a :class:`app.services.vram_history.VramHistory`: one curve per series, created
the first time the series appears and kept; each :meth:`VramPlot.refresh` does exactly one
``setData`` per curve. NaN samples from the history break the line (``connect="finite"``), so a
silent source shows as a gap. X is fixed to the last ``window_seconds`` seconds; Y is fixed to
``[0, largest total]`` (no auto-range per tick). On CPU the axis says the daemon's series is
system memory. GUI thread; the adapter (not this widget) decides when to refresh.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.services.vram_history import DAEMON_SERIES, VramHistory

_COLOURS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae")


class VramPlot(QWidget):
    """pyqtgraph plot of :class:`VramHistory` (see module docstring)."""

    def __init__(self, history: VramHistory, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("vramPlot")
        self.history = history
        self.plot = pg.PlotWidget(background="#1e1e1e")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        item = self.plot.getPlotItem()
        item.hideButtons()
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setMouseEnabled(x=False, y=False)
        item.enableAutoRange(x=False, y=False)
        item.setXRange(-history.window_seconds, 0, padding=0)
        item.setYRange(0, 1, padding=0)
        item.setLabel("bottom", "time", units="s")
        item.setLabel("left", "VRAM used (GiB)")
        self.legend = item.addLegend(offset=(10, 10))
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._y_max = 1.0
        self._system_memory = False

    def set_daemon_on_system_memory(self, system_memory: bool) -> None:
        """On CPU the daemon's "VRAM" is the machine's RAM: say so on the axis."""
        if system_memory == self._system_memory:
            return
        self._system_memory = system_memory
        # No units= here: pyqtgraph would SI-prefix "GiB" (e.g. "mGiB") for small values.
        label = "GiB used · daemon: system RAM" if system_memory else "VRAM used (GiB)"
        self.plot.getPlotItem().setLabel("left", label)

    def axis_label(self) -> str:
        return self.plot.getPlotItem().getAxis("left").labelText

    def _curve(self, name: str) -> pg.PlotDataItem:
        curve = self.curves.get(name)
        if curve is None:
            colour = _COLOURS[len(self.curves) % len(_COLOURS)]
            width = 2 if name == DAEMON_SERIES else 1
            curve = self.plot.plot([], [], pen=pg.mkPen(colour, width=width), name=name, connect="finite")
            self.curves[name] = curve
        return curve

    def refresh(self) -> None:
        """Redraw every series from the history: one setData per curve."""
        for name in self.history.names:
            window = self.history.window(name)
            self._curve(name).setData(window.x, window.y, connect="finite")
        total = self.history.max_total_gb()
        if total and abs(total * 1.05 - self._y_max) > 1e-6:
            self._y_max = total * 1.05
            self.plot.getPlotItem().setYRange(0, self._y_max, padding=0)
