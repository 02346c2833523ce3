"""``luna gui --self-test``: the real window, the real daemon child, every panel once, then exit.

Builds the real main window through :func:`app.bootstrap.build_operator` on embedded default
settings (both daemon ports 0, so it always starts its own child and never attaches to or
disturbs a running daemon; a temporary config dir, so nothing of the operator's is written),
starts the daemon child, waits for its first status over the WebSocket, then exercises each
panel: daemon and pool cards filled, VRAM curve drawn, scaling timeline and instances table
rendered, settings dialog built and validated, log pane holding the daemon's output, a shipped
template opened in the template editor, each tab shown and grabbed. Stops the daemon and
returns 0, or returns 1 after printing which check failed. The bundle smoke test (issue "bundle") runs it. Runs on the qasync loop.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from app.bootstrap import BuildOptions, Operator, build_operator, with_test_ports
from app.comfy.router import RouterSettings
from app.gui.widgets.settings_dialog import SettingsDialog
from app.services.daemon_supervisor import SupervisorOptions
from app.services.settings import OperatorSettings

DAEMON_ARGS_ENV = "LUNA_SELF_TEST_DAEMON_ARGS"
EXIT_OK = 0
EXIT_FAILED = 1


class SelfTestFailure(RuntimeError):
    """One self-test check failed; the message names it."""


async def _wait_signal(signal, what: str, timeout: float, already: Callable[[], bool]) -> None:
    """Return once ``already()`` holds, re-checked on every emission of ``signal``."""
    if already():
        return
    done = asyncio.get_running_loop().create_future()

    def check(*_args: object) -> None:
        if not done.done() and already():
            done.set_result(None)

    signal.connect(check)
    try:
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        raise SelfTestFailure(f"timed out after {timeout:.0f} s waiting for {what}") from None
    finally:
        signal.disconnect(check)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SelfTestFailure(what)


async def _step(out: TextIO, name: str, action: Awaitable[None]) -> None:
    started = time.monotonic()
    try:
        await action
    except SelfTestFailure:
        raise
    except Exception as exc:
        raise SelfTestFailure(f"{name}: {type(exc).__name__}: {exc}") from exc
    print(f"self-test: ok   {name} ({time.monotonic() - started:.2f} s)", file=out, flush=True)


async def run_self_test(*, timeout: float = 120.0, out: TextIO) -> int:
    with tempfile.TemporaryDirectory(prefix="luna-self-test-") as config_dir:
        # Extra daemon flags for a run by hand or a test of the failure path (e.g. a bad flag).
        extra = tuple(shlex.split(os.environ.get(DAEMON_ARGS_ENV, "")))
        options = BuildOptions(
            supervisor=SupervisorOptions(ready_timeout=timeout, max_restarts=0, extra_args=extra),
            router=RouterSettings(health_interval=1.0, probe_timeout=1.0),
            config_dir=Path(config_dir),
            remember_window=False,
        )
        operator = build_operator(with_test_ports(OperatorSettings()), options)
        try:
            await _checks(operator, timeout, out)
        except SelfTestFailure as exc:
            print(f"self-test: FAILED {exc}", file=out, flush=True)
            log_tail = [line.text for line in operator.supervisor.supervisor.log_tail][-15:]
            if log_tail:
                print("self-test: daemon output (last lines):", file=out)
                for line in log_tail:
                    print(f"  {line}", file=out)
            return EXIT_FAILED
        finally:
            await operator.aclose()
            operator.window.allow_close()
            operator.window.deleteLater()
        if operator.supervisor.supervisor.child_pid is not None:
            print("self-test: FAILED the daemon child is still running after stop", file=out)
            return EXIT_FAILED
        print("self-test: passed", file=out, flush=True)
        return EXIT_OK


async def _checks(operator: Operator, timeout: float, out: TextIO) -> None:
    window, widgets = operator.window, operator.widgets
    window.show()

    async def start() -> None:
        await operator.start()
        await operator.supervisor.supervisor.wait_up(timeout)

    async def first_status() -> None:
        await _wait_signal(
            operator.feed.status_received,
            "the first status over the WebSocket",
            timeout,
            lambda: operator.feed.last_status is not None,
        )

    async def cards() -> None:
        # The cards render synchronously on status_received, so they are filled by now.
        _require(widgets.daemon_card.value("version") != "—", "daemon card: no version shown")
        _require(widgets.vae_card.value("limits") != "—", "VAE pool card: no limits shown")
        _require(widgets.clip_card.value("limits") != "—", "CLIP pool card: no limits shown")

    async def graph() -> None:
        widgets.vram_plot.refresh()
        curve = widgets.vram_plot.curves.get("daemon")
        if curve is None or curve.getData()[0] is None or len(curve.getData()[0]) == 0:
            raise SelfTestFailure("VRAM graph: the daemon curve has no points")

    async def timeline_and_table() -> None:
        widgets.timeline.refresh()
        expected = len(operator.settings.instances.instances)
        _require(
            widgets.instances.rowCount() == expected,
            f"instances table: {widgets.instances.rowCount()} rows, expected {expected}",
        )

    async def settings_dialog() -> None:
        dialog = SettingsDialog(operator.settings, window)
        try:
            dialog.build_settings()
        finally:
            dialog.deleteLater()

    async def log_pane() -> None:
        await _wait_signal(
            operator.supervisor.log_line,
            "daemon output in the log pane",
            10,
            lambda: bool(widgets.log_pane.toPlainText().strip()),
        )

    async def template_editor() -> None:
        # Read-only: opens a shipped template (nothing is written to the operator's templates).
        entries = operator.templates.entries
        _require(any(e.origin == "shipped" for e in entries), "template editor: no shipped templates listed")
        operator.templates.open(next(e.name for e in entries if e.origin == "shipped"))
        editor = widgets.templates
        _require(editor.mapping.rowCount() > 0, "template editor: the parameter table is empty")
        _require(editor.nodes.topLevelItemCount() > 0, "template editor: the node table is empty")

    async def tabs() -> None:
        for index in range(window.tabs.count()):
            window.tabs.setCurrentIndex(index)
            if window.tabs.currentWidget().grab().isNull():
                raise SelfTestFailure(f"tab {window.tabs.tabText(index)!r} did not render")

    for name, action in (
        ("window built and shown", _noop()),
        ("daemon child started and ready", start()),
        ("first status over the WebSocket", first_status()),
        ("daemon and pool cards", cards()),
        ("VRAM graph", graph()),
        ("scaling timeline and instances table", timeline_and_table()),
        ("settings dialog", settings_dialog()),
        ("daemon log pane", log_pane()),
        ("template editor", template_editor()),
        ("every tab renders", tabs()),
    ):
        await _step(out, name, action)

    async def stop() -> None:
        await operator.supervisor.supervisor.stop()

    await _step(out, "daemon stopped", stop())


async def _noop() -> None:
    return None
