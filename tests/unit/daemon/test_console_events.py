"""Console control events stop the daemon gracefully, on a loop without
``add_signal_handler`` (as the Windows Proactor loop has none).

Linux exercises our logic: which events are handled, that Ctrl+C/Break return at once, that
close/logoff/shutdown wait (bounded) until the daemon has closed, that the request reaches the
loop thread via ``call_soon_threadsafe``, that a failed registration degrades to signals, and a
real in-process daemon stopped by a close event delivered from another thread. The fake
``WindowsApi`` stands in for ``SetConsoleCtrlHandler``. Only a real Windows box can confirm that
Windows calls the handler on its own thread, honours the return value, and grants the ~5 s after
a console close (and that no user32-loading library suppresses logoff/shutdown events).
"""

from __future__ import annotations

import asyncio
import functools
import io
import signal
import threading

import pytest

from daemon import console_events, server
from daemon.console_events import (
    CTRL_BREAK_EVENT,
    CTRL_C_EVENT,
    CTRL_CLOSE_EVENT,
    CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
    ConsoleStopHandler,
    install_stop_handler,
)
from daemon.wire.ready import DaemonExit, parse_ready_line
from tests.helpers.daemon_fixtures import daemon_config


class FakeWindowsApi:
    """Records registrations like SetConsoleCtrlHandler; ``fail`` makes registration fail."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.handlers: list = []
        self.removed: list = []

    def add_console_handler(self, routine):
        if self.fail:
            raise OSError(87, "The parameter is incorrect")
        token = ("cfunc", routine)
        self.handlers.append(token)
        return token

    def remove_console_handler(self, token):
        self.removed.append(token)

    def deliver(self, event: int) -> bool:
        """What Windows does: call the newest handler on a thread of its own."""
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(self.handlers[-1][1](event)))
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the handler did not return"
        return result[0]


def in_thread(function, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function(*args)))
    thread.start()
    return thread, result


async def test_unknown_events_are_left_to_the_next_handler():
    handler = ConsoleStopHandler(asyncio.get_running_loop(), lambda reason: None)
    assert handler(3) is False and handler(99) is False


@pytest.mark.parametrize("event", [CTRL_C_EVENT, CTRL_BREAK_EVENT])
async def test_ctrl_c_and_break_request_the_stop_on_the_loop_thread_and_return_at_once(event):
    requested = asyncio.Event()
    seen: list[tuple[str, int]] = []

    def request_stop(reason):
        seen.append((reason, threading.get_ident()))
        requested.set()

    handler = ConsoleStopHandler(asyncio.get_running_loop(), request_stop, close_wait=600)
    thread, result = in_thread(handler, event)
    await asyncio.to_thread(thread.join, 30)
    assert result == [True]  # returned without waiting for the stop (close_wait is 600 s)
    await asyncio.wait_for(requested.wait(), 5)
    assert seen == [(f"console {console_events.EVENT_NAMES[event]}", threading.get_ident())]


@pytest.mark.parametrize("event", [CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT])
async def test_final_events_wait_until_the_daemon_has_stopped(event):
    requested = asyncio.Event()
    handler = ConsoleStopHandler(asyncio.get_running_loop(), lambda reason: requested.set(), close_wait=600)
    thread, result = in_thread(handler, event)
    await asyncio.wait_for(requested.wait(), 5)
    assert thread.is_alive() and result == []  # still holding Windows off while we close
    handler.stopped()
    await asyncio.to_thread(thread.join, 30)
    assert result == [True]


async def test_the_wait_is_bounded_and_says_so(caplog):
    handler = ConsoleStopHandler(asyncio.get_running_loop(), lambda reason: None, close_wait=0.01)
    thread, result = in_thread(handler, CTRL_CLOSE_EVENT)
    await asyncio.to_thread(thread.join, 30)
    assert result == [True]
    assert "did not stop within" in caplog.text


def test_an_event_after_the_loop_closed_is_handled_quietly():
    loop = asyncio.new_event_loop()
    loop.close()
    handler = ConsoleStopHandler(loop, lambda reason: None, close_wait=600)
    assert handler(CTRL_CLOSE_EVENT) is True


async def test_install_is_a_no_op_off_windows_and_registers_on_windows():
    loop = asyncio.get_running_loop()
    api = FakeWindowsApi()
    assert install_stop_handler(loop, lambda reason: None, platform="linux", api=api) is None
    assert api.handlers == []
    handler, remove = install_stop_handler(loop, lambda reason: None, platform="win32", api=api)
    [(_, routine)] = api.handlers
    assert routine is handler and (handler, api.handlers[0]) in console_events._KEEP_ALIVE
    remove()
    assert api.removed == api.handlers


async def test_a_failed_registration_leaves_signals_in_charge(caplog):
    api = FakeWindowsApi(fail=True)
    assert install_stop_handler(asyncio.get_running_loop(), print, platform="win32", api=api) is None
    assert "cannot install the console control handler" in caplog.text


class ReadySink:
    """stdout stand-in: remembers the READY line and wakes the test."""

    def __init__(self):
        self.text = ""
        self.ready = asyncio.Event()

    def write(self, text):
        self.text += text
        if parse_ready_line(self.text.splitlines()[0]) is not None:
            self.ready.set()

    def flush(self):
        pass


def windows_like(monkeypatch) -> FakeWindowsApi:
    """_run_with_signals as on Windows: a loop without add_signal_handler, the console handler
    registered with a fake SetConsoleCtrlHandler. Returns the fake API."""
    api = FakeWindowsApi()
    loop = asyncio.get_running_loop()

    def no_signal_handlers(*_args):
        raise NotImplementedError  # what the Proactor event loop raises

    monkeypatch.setattr(loop, "add_signal_handler", no_signal_handlers)
    monkeypatch.setattr(
        console_events,
        "install_stop_handler",
        functools.partial(console_events.install_stop_handler, platform="win32", api=api),
    )
    return api


async def test_a_console_close_event_stops_a_real_daemon_before_the_handler_returns(monkeypatch):
    api = windows_like(monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    sink = ReadySink()
    run = asyncio.create_task(server._run_with_signals(daemon_config(), sink))
    await asyncio.wait_for(sink.ready.wait(), 60)
    assert signal.getsignal(signal.SIGTERM) is not before  # the Proactor fallback: signal.signal
    delivered = asyncio.create_task(asyncio.to_thread(api.deliver, CTRL_CLOSE_EVENT))
    assert await asyncio.wait_for(run, 60) == DaemonExit.OK
    assert await delivered is True  # it returned only once the daemon had closed
    assert api.removed == api.handlers
    assert signal.getsignal(signal.SIGTERM) is before  # restored


async def test_the_fallback_signal_handler_stops_the_daemon_through_the_loop(monkeypatch):
    windows_like(monkeypatch)
    sink = ReadySink()
    run = asyncio.create_task(server._run_with_signals(daemon_config(), sink))
    await asyncio.wait_for(sink.ready.wait(), 60)
    # What CPython does on Windows for SIGBREAK/SIGINT: call the Python handler on the main thread.
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert await asyncio.wait_for(run, 60) == DaemonExit.OK


async def test_a_stop_requested_while_the_daemon_starts_is_not_lost():
    # The console handler answers Ctrl+C "handled", so no KeyboardInterrupt ends a slow start-up:
    # the request must survive until serve_forever().
    daemon = server.DaemonServer(daemon_config(), stdout=io.StringIO())
    daemon.request_shutdown("console CTRL_C_EVENT")
    await daemon.start()
    try:
        assert await asyncio.wait_for(daemon.serve_forever(), 5) == "console CTRL_C_EVENT"
    finally:
        await daemon.close()
