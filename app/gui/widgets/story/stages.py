"""The turn's stage indicator: Preprocessor → Strategist → Writer → Dreamer → Render, and the
render's progress bar. Slots: ``on_stage(stage, state, detail)``, ``on_progress(fraction)``. GUI thread."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget

from app.gui.adapters.story import PANEL_STAGES

LOOK = {
    "waiting": ("○", "palette(mid)", ""),
    "running": ("●", "#1e6fd9", "font-weight: bold;"),
    "done": ("✓", "#2e8b3d", ""),
    "failed": ("✗", "#c62828", "font-weight: bold;"),
    "skipped": ("–", "palette(mid)", ""),
}


class StageIndicator(QWidget):
    """See the module docstring; ``states`` and ``labels`` by stage for tests."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.labels: dict[str, QLabel] = {}
        self.states: dict[str, str] = {}
        self.progress = QProgressBar()
        for index, stage in enumerate(PANEL_STAGES):
            if index:
                layout.addWidget(QLabel("→"))
            label = QLabel()
            label.setObjectName(f"stage_{stage}")
            self.labels[stage] = label
            layout.addWidget(label)
            self.on_stage(stage, "waiting", "")
        self.progress.setRange(0, 1000)
        self.progress.setFormat("render %p%")
        self.progress.setMaximumWidth(220)
        self.progress.setValue(0)
        layout.addSpacing(12)
        layout.addWidget(self.progress)
        layout.addStretch(1)

    def on_stage(self, stage: str, state: str, detail: str) -> None:
        self.states[stage] = state
        mark, colour, extra = LOOK.get(state, LOOK["waiting"])
        label = self.labels[stage]
        label.setText(f"{mark} {stage.capitalize()}")
        label.setStyleSheet(f"color: {colour}; {extra}")
        label.setToolTip(f"{stage}: {state}" + (f" — {detail}" if detail else ""))
        if stage == "render" and state == "waiting":
            self.progress.setValue(0)

    def on_progress(self, fraction: float) -> None:
        self.progress.setValue(int(fraction * 1000))
