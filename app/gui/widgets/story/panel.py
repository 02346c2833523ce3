"""The Story tab: sessions and LLM backend on the left, the transcript with its stage indicator,
health line and player input in the middle, the cast editor on the right; the re-render, render
history and image dialogs it opens. Composition and wiring only — every action goes to
:class:`app.gui.adapters.story.StoryAdapter`. GUI thread."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.adapters.story import StoryAdapter
from app.gui.widgets.story.backend import BackendPicker
from app.gui.widgets.story.cast_editor import CastEditor
from app.gui.widgets.story.images import ImageViewer
from app.gui.widgets.story.render_history import RenderHistory
from app.gui.widgets.story.rerender_dialog import RerenderDialog
from app.gui.widgets.story.sessions import SessionsList
from app.gui.widgets.story.stages import StageIndicator
from app.gui.widgets.story.transcript import Transcript, shown_render
from app.narrates.readiness import RenderReadiness

HEALTH_LOOK = {
    "ok": "background: #e8f5e9; color: #1b5e20;",
    "fallback": "background: #fff4e0; color: #7a4a00;",
    "blocked": "background: #fdecea; color: #8e1b1b;",
}


class StoryPanel(QWidget):
    """See the module docstring; the parts by name for tests and screenshots."""

    def __init__(self, adapter: StoryAdapter, parent: QWidget | None = None):
        super().__init__(parent)
        self.adapter = adapter
        self.sessions = SessionsList()
        self.backend = BackendPicker()
        self.transcript = Transcript()
        self.stages = StageIndicator()
        self.cast = CastEditor()
        self.health = QLabel()
        self.health.setWordWrap(True)
        self.health.setVisible(False)
        self.health.setContentsMargins(8, 4, 8, 4)
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("What do you do or say? (Ctrl+Enter sends)")
        self.input.setMaximumHeight(80)
        self.send_button = QPushButton("Send")
        self.cancel_button = QPushButton("Cancel turn")
        self.undo_button = QPushButton("Undo last turn")
        self.regenerate_button = QPushButton("Regenerate (new swipe)")
        self.cancel_button.setEnabled(False)
        self.dialogs: list[QWidget] = []
        self.history: RenderHistory | None = None
        self.rerender: RerenderDialog | None = None
        self.viewer: ImageViewer | None = None

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.sessions, 1)
        left_layout.addWidget(self.backend)
        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(0, 0, 0, 0)
        middle_layout.addWidget(self.health)
        middle_layout.addWidget(self.transcript, 1)
        middle_layout.addWidget(self.stages)
        input_row = QHBoxLayout()
        input_row.addWidget(self.input, 1)
        buttons = QVBoxLayout()
        for button in (self.send_button, self.cancel_button):
            buttons.addWidget(button)
        input_row.addLayout(buttons)
        more = QVBoxLayout()
        for button in (self.undo_button, self.regenerate_button):
            more.addWidget(button)
        input_row.addLayout(more)
        middle_layout.addLayout(input_row)
        right = QGroupBox("Cast, world notes and render settings")
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.cast)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        for widget in (left, middle, right):
            splitter.addWidget(widget)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 800, 440])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self._connect()
        self._set_busy(False)

    def _connect(self) -> None:
        a = self.adapter
        a.sessions_changed.connect(lambda rows: self.sessions.on_sessions(rows, a.session_id))
        a.view_changed.connect(self._on_view)
        a.turn_started.connect(self.transcript.begin_live)
        a.prose_token.connect(self.transcript.append_prose)
        a.stage_changed.connect(self.stages.on_stage)
        a.render_progress.connect(self.stages.on_progress)
        a.busy_changed.connect(self._set_busy)
        a.turn_ended.connect(lambda *_: self.transcript.end_live())
        a.readiness_changed.connect(self.on_readiness)
        a.backend_changed.connect(self.backend.on_state)
        a.rerender_finished.connect(self._on_rerendered)
        self.sessions.open_requested.connect(a.open_session)
        self.sessions.new_requested.connect(a.new_session)
        self.sessions.rename_requested.connect(a.rename_session)
        self.sessions.delete_requested.connect(a.delete_session)
        self.sessions.export_requested.connect(self.ask_export)
        self.backend.choice_made.connect(a.choose_backend)
        self.backend.rescan.connect(self._rescan)
        self.cast.save_requested.connect(a.save_cast)
        self.transcript.edit_saved.connect(a.edit)
        self.transcript.variant_chosen.connect(a.choose_variant)
        self.transcript.rerender_requested.connect(self.open_rerender)
        self.transcript.history_requested.connect(self.open_history)
        self.transcript.image_clicked.connect(self.open_image)
        self.send_button.clicked.connect(self.send)
        self.cancel_button.clicked.connect(a.cancel)
        self.undo_button.clicked.connect(a.undo)
        self.regenerate_button.clicked.connect(a.regenerate)
        QShortcut(QKeySequence("Ctrl+Return"), self.input, activated=self.send)

    def _rescan(self) -> None:
        self.adapter.refresh_backend()  # the picker lists what it finds (backend_changed)

    def send(self) -> None:
        if self.adapter.send(self.input.toPlainText()):
            self.input.clear()

    def _on_view(self, view) -> None:
        self.transcript.set_view(view, self.adapter.variants)
        self.cast.on_view(view)
        self._set_busy(self.adapter.busy)
        if self.history is not None and self.history.isVisible():
            self.history.set_renders(self.adapter.renders(self.history.scene_id))

    def _set_busy(self, busy: bool) -> None:
        has_session = self.adapter.view is not None
        has_turns = has_session and bool(self.adapter.view.turns)
        self.send_button.setEnabled(has_session and not busy)
        self.cancel_button.setEnabled(busy)
        self.undo_button.setEnabled(has_turns and not busy)
        self.regenerate_button.setEnabled(has_turns and not busy)
        self.input.setEnabled(has_session)

    def on_readiness(self, readiness: RenderReadiness) -> None:
        prefix = {"ok": "✓ ", "fallback": "⚠ Before the next turn: ", "blocked": "✗ Before the next turn: "}
        self.health.setText(prefix.get(readiness.level, "") + readiness.describe())
        self.health.setStyleSheet(f"QLabel {{ {HEALTH_LOOK.get(readiness.level, '')} border-radius: 4px; }}")
        self.health.setVisible(True)

    # --- dialogs --------------------------------------------------------------------------

    def open_image(self, path: str) -> ImageViewer:
        self.viewer = ImageViewer(path, "Scene", self)
        self.viewer.show()
        return self.viewer

    def open_rerender(self, scene_id: int) -> RerenderDialog:
        scene = self.adapter.scene(scene_id)
        shown = shown_render(self.adapter.renders(scene_id))
        self.rerender = RerenderDialog(scene, shown.seed if shown else None, self)
        self.rerender.submitted.connect(lambda changes: self.adapter.rerender(scene_id, changes))
        self.rerender.show()
        return self.rerender

    def open_history(self, scene_id: int) -> RenderHistory:
        if self.history is not None:
            self.history.close()
        self.history = RenderHistory(scene_id, self)
        self.history.use_requested.connect(self.adapter.choose_render)
        self.history.rerender_requested.connect(self.open_rerender)
        self.history.image_clicked.connect(self.open_image)
        self.history.set_renders(self.adapter.renders(scene_id))
        self.history.show()
        return self.history

    def _on_rerendered(self, scene_id: int, _record) -> None:
        if self.history is not None and self.history.scene_id == scene_id:
            self.history.set_renders(self.adapter.renders(scene_id))

    def ask_export(self, fmt: str) -> None:
        view = self.adapter.view
        if view is None:
            return
        suffix = {"md": "Markdown (*.md)", "html": "HTML (*.html)"}[fmt]
        dialog = QFileDialog(self, "Export the story", f"{view.session.title}.{fmt}", suffix)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.fileSelected.connect(lambda path: self.adapter.export(fmt, Path(path)))
        dialog.open()  # non-modal: the qasync loop keeps running turns meanwhile
        self.dialogs.append(dialog)
