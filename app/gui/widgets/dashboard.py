"""The dashboard panel: layout only — daemon card, pool cards, scaling events, memory graph,
scaling timeline, instances table.

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
    """Cards and the event list on the left, graph + timeline on the right, instances underneath."""

    def __init__(
        self,
        *,
        controls: QWidget,
        daemon_card: QWidget,
        vae_card: QWidget,
        clip_card: QWidget,
        vram_plot: QWidget,
        timeline: QWidget,
        event_list: QWidget,
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
        card_column.addWidget(_boxed("Scaling events", event_list), 1)
        graphs = QWidget()
        graph_column = QVBoxLayout(graphs)
        graph_column.setContentsMargins(0, 0, 0, 0)
        graph_column.addWidget(_boxed("Memory (last 90 s)", vram_plot), 1)
        graph_column.addWidget(_boxed("Scaling timeline (▲ up, ▼ down)", timeline))
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
