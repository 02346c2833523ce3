"""Entry of the operator window: QApplication, one qasync loop, the composition root, ordered quit.

``run_gui(args)`` (from ``luna`` / ``luna gui``) creates the ``QApplication``, installs the one
``sys.excepthook`` (an unexpected error becomes a readable line in the status bar and the log,
never a traceback dialog), loads the settings (a broken settings file is reported and the
defaults are used), and runs :func:`operator_main` with
``asyncio.Runner(loop_factory=qasync.QEventLoop)``. Closing the window stops the services in
order (:meth:`app.bootstrap.Operator.aclose`) before the window really closes. With
``--self-test`` it runs :func:`app.gui.self_test.run_self_test` instead. Main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

import psutil
import qasync
from PySide6.QtWidgets import QApplication

from app.bootstrap import BuildOptions, Operator, build_operator
from app.gui.adapters.messages import MessageHub
from app.paths import user_dirs
from app.services.settings import OperatorSettings, SettingsError, load_settings

log = logging.getLogger(__name__)


def application() -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
        app.setApplicationName("Luna Narrates Operator")
        app.setOrganizationName("Luna")
    # The asyncio main coroutine decides when the app ends (after the daemon is stopped);
    # Qt quitting on its own when the window closes would stop the loop under it.
    app.setQuitOnLastWindowClosed(False)
    assert isinstance(app, QApplication)
    return app


def install_excepthook(messages: MessageHub) -> None:
    """qasync's ``asyncSlot`` and Qt slots report uncaught errors here: log them, show a line."""

    def hook(kind, value, traceback) -> None:
        log.error("unexpected error", exc_info=(kind, value, traceback))
        messages.error(f"Unexpected error: {kind.__name__}: {value} (details in the log)")

    sys.excepthook = hook


def _configure_logging(verbose: bool) -> None:
    """INFO (DEBUG with -v) to stderr when there is one (a windowed Windows build has none) and
    to ``operator.log`` in the user log dir (``LUNA_HOME`` honoured)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = []
    if sys.stderr is not None:
        handlers.append(logging.StreamHandler())
    try:
        logs = user_dirs().logs
        logs.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logs / "operator.log", encoding="utf-8"))
    except OSError:
        pass  # no log file is no reason not to open the window
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


async def operator_main(settings: OperatorSettings, options: BuildOptions, startup_error: str = "") -> int:
    """Build, show, run until the window is closed, stop everything in order."""
    app = application()
    operator = build_operator(settings, options)
    install_excepthook(operator.messages)
    if startup_error:
        operator.messages.error(startup_error)
    quit_requested = asyncio.Event()
    operator.window.close_requested.connect(quit_requested.set)
    app.aboutToQuit.connect(quit_requested.set)
    restore_signals = _quit_on_signals(quit_requested)
    operator.window.show()
    log.info("window shown %.2f s after the process started", time.time() - psutil.Process().create_time())
    await operator.start()
    await quit_requested.wait()
    await shutdown(operator)
    restore_signals()
    operator.window.deleteLater()
    return 0


def _quit_on_signals(quit_requested: asyncio.Event) -> Callable[[], None]:
    """Ctrl+C / SIGTERM quit like closing the window (daemon stopped first). Plain handlers: the
    loop's add_signal_handler is not dependable under qasync; the VRAM tick gives Python control
    at least once a second, so the handler runs promptly."""
    loop = asyncio.get_running_loop()
    previous = {}
    for name in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, lambda *_: loop.call_soon_threadsafe(quit_requested.set))

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


async def shutdown(operator: Operator) -> None:
    operator.window.notice_bar.showMessage("Stopping the daemon…")
    try:
        await operator.aclose()
    finally:
        operator.window.allow_close()


def run_gui(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``luna`` / ``luna gui``: returns the process exit status."""
    _configure_logging(getattr(args, "verbose", False))
    application()
    if getattr(args, "self_test", False):
        from app.gui.self_test import run_self_test

        return run_on_qt_loop(run_self_test(timeout=args.self_test_timeout, out=stdout or sys.stdout))
    startup_error = ""
    try:
        settings = load_settings()
    except SettingsError as exc:
        startup_error = f"Settings file problem, using defaults: {exc}"
        settings = OperatorSettings()
    options = BuildOptions(autostart_daemon=not getattr(args, "no_daemon", False))
    return run_on_qt_loop(operator_main(settings, options, startup_error))


def run_on_qt_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on a qasync loop over the QApplication (``asyncio.Runner``: Python 3.11 has
    no ``asyncio.run(loop_factory=…)``)."""
    with asyncio.Runner(loop_factory=qasync.QEventLoop) as runner:
        status = runner.run(coro)
    # Destroy the widgets while Qt and Python are both alive rather than in the interpreter's
    # final garbage collection, where the order of Qt and Python teardown is undefined.
    app = QApplication.instance()
    if app is not None:
        for widget in app.topLevelWidgets():
            widget.deleteLater()
        app.sendPostedEvents(None, 0)
        app.processEvents()
    return status
