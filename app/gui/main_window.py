"""The operator's main window: tabs, menus, shortcuts and the status bar — composition only.

Gets its panels, the notice bar and the actions' targets from :mod:`app.bootstrap`; restores
and saves geometry and the last tab through :mod:`app.services.ui_state`. Closing the window
emits ``close_requested`` (the app's main coroutine then stops the services in order and quits).
GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QByteArray, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QMainWindow, QTabWidget, QWidget

from app.gui.widgets.notice_bar import NoticeBar
from app.services.ui_state import UiState


class MainWindow(QMainWindow):
    """Tabs by key (``dashboard``, ``log``…); ``actions`` by name for tests and the self-test."""

    close_requested = Signal()

    def __init__(self, notice_bar: NoticeBar, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("Luna Narrates Operator")
        self.resize(1280, 860)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.setCentralWidget(self.tabs)
        self.setStatusBar(notice_bar)
        self.notice_bar = notice_bar
        self._tab_keys: list[str] = []
        self.actions: dict[str, QAction] = {}
        self._closing_allowed = False
        self._menus = {
            name: self.menuBar().addMenu(title)
            for name, title in (("file", "&File"), ("daemon", "&Daemon"), ("view", "&View"))
        }

    def add_tab(self, key: str, title: str, widget: QWidget) -> None:
        self._tab_keys.append(key)
        self.tabs.addTab(widget, title)
        number = len(self._tab_keys)
        if number <= 9:
            self.add_action("view", f"show_{key}", title, f"Ctrl+{number}", lambda k=key: self.show_tab(k))

    def add_action(self, menu: str, name: str, text: str, shortcut: str | None, handler: Callable) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(handler)
        self._menus[menu].addAction(action)
        self.actions[name] = action
        return action

    def show_tab(self, key: str) -> None:
        if key in self._tab_keys:
            self.tabs.setCurrentIndex(self._tab_keys.index(key))

    def current_tab(self) -> str:
        index = self.tabs.currentIndex()
        return self._tab_keys[index] if 0 <= index < len(self._tab_keys) else ""

    def restore(self, state: UiState) -> None:
        if state.geometry:
            self.restoreGeometry(QByteArray(state.geometry))
        self.show_tab(state.last_tab)

    def ui_state(self) -> UiState:
        return UiState(bytes(self.saveGeometry().data()), self.current_tab() or "dashboard")

    def allow_close(self) -> None:
        """Called once the services are stopped: the next close really closes."""
        self._closing_allowed = True
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing_allowed:
            event.accept()
            return
        # Stop the daemon and feeds first (asynchronously); the app closes us afterwards.
        event.ignore()
        self.close_requested.emit()
