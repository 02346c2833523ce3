"""The dashboard panel: layout only — daemon card, pool cards, VRAM graph, timeline, instances.

Receives its child widgets ready-made from :mod:`app.bootstrap` and arranges them; no logic,
no I/O. GUI thread.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QSplitter, QVBoxLayout, QWidget


def _boxed(title: str, widget: QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(widget)
    return box


class DashboardPanel(QWidget):
    """Cards on the left, graph + timeline on the right, instances table underneath."""

    def __init__(
        self,
        *,
        controls: QWidget,
        daemon_card: QWidget,
        vae_card: QWidget,
        clip_card: QWidget,
        vram_plot: QWidget,
        timeline: QWidget,
        instances: QWidget,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setObjectName("dashboard")
        cards = QWidget()
        card_column = QVBoxLayout(cards)
        card_column.setContentsMargins(0, 0, 0, 0)
        card_column.addWidget(daemon_card)
        pools = QHBoxLayout()
        pools.addWidget(vae_card)
        pools.addWidget(clip_card)
        card_column.addLayout(pools)
        card_column.addStretch(1)
        graphs = QWidget()
        graph_column = QVBoxLayout(graphs)
        graph_column.setContentsMargins(0, 0, 0, 0)
        graph_column.addWidget(_boxed("Memory (last 90 s)", vram_plot), 3)
        graph_column.addWidget(_boxed("Scaling events", timeline), 2)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(cards)
        top.addWidget(graphs)
        top.setStretchFactor(1, 1)
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(top)
        vertical.addWidget(_boxed("ComfyUI instances", instances))
        vertical.setStretchFactor(0, 3)
        vertical.setStretchFactor(1, 1)
        vertical.setSizes([640, 260])
        layout = QVBoxLayout(self)
        layout.addWidget(controls)
        layout.addWidget(vertical, 1)
