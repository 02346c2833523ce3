"""The story so far: one card per turn (player input, prose, swipes, the scene inline), plus the
live card of the running turn, into which the Writer's prose streams.

Signals (the panel connects them to :class:`app.gui.adapters.story.StoryAdapter`):
``edit_saved(int turn_id, str prose)``, ``variant_chosen(int turn_id)``,
``rerender_requested(int scene_id)``, ``history_requested(int scene_id)``,
``image_clicked(str path)``. GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.gui.widgets.story.images import Thumbnail
from app.narrates.service import SessionView, TurnView
from app.narrates.store import RenderRecord, TurnRecord


def shown_render(renders: Sequence[RenderRecord]) -> RenderRecord | None:
    """The render a scene shows: the chosen one, else the latest finished one."""
    done = [r for r in renders if r.status == "done" and r.files]
    chosen = [r for r in done if r.chosen]
    return (chosen or done or [None])[-1]


class TurnCard(QFrame):
    """One turn of the timeline (see the module docstring)."""

    def __init__(self, view: TurnView, variants: Sequence[TurnRecord], transcript: Transcript):
        super().__init__()
        self.turn = view.turn
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        head = QHBoxLayout()
        you = QLabel(f"<b>Turn {view.turn.position}</b> · <i>You:</i> {_escape(view.turn.player_input)}")
        you.setTextFormat(Qt.TextFormat.RichText)
        you.setWordWrap(True)
        head.addWidget(you, 1)
        ids = [v.id for v in variants]
        self.swipe_label = QLabel()
        if len(ids) > 1 and self.turn.id in ids:
            at = ids.index(self.turn.id)
            back, forward = QPushButton("‹"), QPushButton("›")
            for button in (back, forward):
                button.setFixedWidth(28)
            back.setToolTip("Previous variant (swipe)")
            forward.setToolTip("Next variant (swipe)")
            back.setEnabled(at > 0)
            forward.setEnabled(at < len(ids) - 1)
            back.clicked.connect(lambda: transcript.variant_chosen.emit(ids[at - 1]))
            forward.clicked.connect(lambda: transcript.variant_chosen.emit(ids[at + 1]))
            self.swipe_label.setText(f"variant {at + 1}/{len(ids)}")
            self.back_button, self.forward_button = back, forward
            head.addWidget(back)
            head.addWidget(self.swipe_label)
            head.addWidget(forward)
        layout.addLayout(head)

        self.prose = QLabel(_paragraphs(view.turn.prose or ""))
        self.prose.setTextFormat(Qt.TextFormat.RichText)
        self.prose.setWordWrap(True)
        self.prose.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.prose)
        self.editor = QPlainTextEdit(view.turn.prose or "")
        self.editor.setVisible(False)
        layout.addWidget(self.editor)

        row = QHBoxLayout()
        self.edit_button = QPushButton("Edit prose")
        self.save_button = QPushButton("Save")
        self.cancel_button = QPushButton("Cancel edit")
        for button in (self.save_button, self.cancel_button):
            button.setVisible(False)
        self.edit_button.clicked.connect(lambda: self.set_editing(True))
        self.cancel_button.clicked.connect(lambda: self.set_editing(False))
        self.save_button.clicked.connect(
            lambda: transcript.edit_saved.emit(self.turn.id, self.editor.toPlainText())
        )
        for button in (self.edit_button, self.save_button, self.cancel_button):
            row.addWidget(button)
        if view.turn.prose_edited:
            row.addWidget(QLabel("<i>(edited)</i>"))
        row.addStretch(1)
        layout.addLayout(row)

        self.thumbnail: Thumbnail | None = None
        for scene, renders in view.scenes:
            scene_row = QHBoxLayout()
            render = shown_render(renders)
            if render is not None:
                self.thumbnail = Thumbnail(render.files[0].path, 280)
                self.thumbnail.clicked.connect(transcript.image_clicked)
                scene_row.addWidget(self.thumbnail)
            side = QVBoxLayout()
            side.addWidget(_render_note(renders, render))
            rerender = QPushButton("Re-render…")
            rerender.clicked.connect(lambda _=False, s=scene.id: transcript.rerender_requested.emit(s))
            history = QPushButton(f"History ({len(renders)})")
            history.clicked.connect(lambda _=False, s=scene.id: transcript.history_requested.emit(s))
            side.addWidget(rerender)
            side.addWidget(history)
            side.addStretch(1)
            scene_row.addLayout(side)
            scene_row.addStretch(1)
            layout.addLayout(scene_row)

    def set_editing(self, editing: bool) -> None:
        self.prose.setVisible(not editing)
        self.editor.setVisible(editing)
        self.edit_button.setVisible(not editing)
        self.save_button.setVisible(editing)
        self.cancel_button.setVisible(editing)
        if editing:
            self.editor.setPlainText(self.turn.prose or "")
            self.editor.setFocus()


def _render_note(renders: Sequence[RenderRecord], shown: RenderRecord | None) -> QLabel:
    if not renders:
        text = "No render yet."
    else:
        last = renders[-1]
        if last.status == "running":
            text = "Rendering…"
        elif last.status == "failed":
            lines = [line.strip(" -") for line in (last.error or "").splitlines() if line.strip()]
            text = f"<span style='color:#c62828'>Last render failed ({last.error_kind}):</span> " + _escape(
                " — ".join(lines[:2])
            )
        elif shown is not None:
            total = (shown.timings or {}).get("total")
            text = f"seed {shown.seed} · {shown.instance or '?'}" + (f" · {total:.1f} s" if total else "")
        else:
            text = ""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumWidth(200)
    label.setMaximumWidth(300)
    return label


class LiveCard(QFrame):
    """The running turn: the player's input and the prose as it streams."""

    def __init__(self, player_input: str):
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("LiveCard { border: 1px solid #1e6fd9; }")
        layout = QVBoxLayout(self)
        you = QLabel(f"<i>You:</i> {_escape(player_input)}")
        you.setWordWrap(True)
        layout.addWidget(you)
        self.text = ""
        self.prose = QLabel("<i>…</i>")
        self.prose.setWordWrap(True)
        layout.addWidget(self.prose)

    def append(self, piece: str) -> None:
        self.text += piece
        self.prose.setText(_paragraphs(self.text) + " ▍")


class Transcript(QScrollArea):
    """See the module docstring; ``cards`` and ``live`` for tests."""

    edit_saved = Signal(int, str)
    variant_chosen = Signal(int)
    rerender_requested = Signal(int)
    history_requested = Signal(int)
    image_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._body = QWidget()
        self._layout = QVBoxLayout(self._body)
        self._layout.addStretch(1)
        self.setWidget(self._body)
        self.cards: list[TurnCard] = []
        self.live: LiveCard | None = None
        self.placeholder = QLabel()
        self.placeholder.setWordWrap(True)
        self._layout.insertWidget(0, self.placeholder)

    def set_view(self, view: SessionView | None, variants_of: Callable[[int], Sequence[TurnRecord]]) -> None:
        for card in self.cards:
            _discard(self._layout, card)
        self.cards = []
        if view is None:
            self.placeholder.setText("Open a session on the left, or create one with New.")
        elif not view.turns:
            self.placeholder.setText(
                "No turns yet. Type what you do or say below and press Send (Ctrl+Enter)."
            )
        self.placeholder.setVisible(view is None or not view.turns)
        for turn in view.turns if view else ():
            card = TurnCard(turn, variants_of(turn.turn.position), self)
            self._layout.insertWidget(self._layout.count() - 1 - (1 if self.live else 0), card)
            self.cards.append(card)
        self._scroll_to_end()

    def begin_live(self, player_input: str) -> None:
        self.end_live()
        self.placeholder.setVisible(False)
        self.live = LiveCard(player_input)
        self._layout.insertWidget(self._layout.count() - 1, self.live)
        self._scroll_to_end()

    def append_prose(self, piece: str) -> None:
        if self.live is not None:
            self.live.append(piece)
            self._scroll_to_end()

    def end_live(self) -> None:
        if self.live is not None:
            _discard(self._layout, self.live)
            self.live = None

    def _scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())


def _discard(layout, widget: QWidget) -> None:
    """Take ``widget`` out of ``layout`` and let Qt delete it later. No ``setParent(None)``: that
    hands the C++ object to Python, which would delete it at once when the last reference goes —
    possibly inside the widget's own signal (a card's Save or swipe button reloads the view)."""
    layout.removeWidget(widget)
    widget.hide()
    widget.deleteLater()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
