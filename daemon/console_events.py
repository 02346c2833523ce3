"""Windows console control events → a graceful daemon stop.

A Windows process has no SIGTERM: ``terminate()`` and ``os.kill`` call TerminateProcess (nothing
runs), and closing the console window, logging off and shutting down arrive as console control
events. With CPython's default handling Windows ends the process before the daemon's ``close()``
has run. :class:`ConsoleStopHandler` is registered with ``SetConsoleCtrlHandler`` (through
``daemon/winapi.py``): for Ctrl+C / Ctrl+Break it asks the daemon's loop to stop and returns at
once (handled: the process lives on and stops by itself); for close / logoff / shutdown, where
Windows ends the process as soon as the handler returns (about 5 s after a console close at the
latest), it asks the loop to stop and then *waits* for the stop to finish, bounded by
``close_wait`` seconds.

Threads: :meth:`ConsoleStopHandler.__call__` runs on a thread Windows creates; it only calls
``loop.call_soon_threadsafe`` and waits on a :class:`threading.Event` that the loop side sets
(:meth:`ConsoleStopHandler.stopped`). The handler object, and the ctypes callback behind it, are
kept referenced for the life of the process (Windows may call it until the very end).
Stdlib only, importable everywhere; :func:`install_stop_handler` does nothing off Windows.

Windows does not call console handlers of a process that loaded user32.dll/gdi32.dll for logoff
and shutdown (it treats it as a GUI application), which a library may do: a supervised daemon is
therefore stopped by its supervisor (the ``shutdown`` op, then its Job Object; PROTOCOL.md §14),
and these events are the safety net for a daemon run by hand in a console.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable

from daemon.winapi import WINDOWS_API, WindowsApi

CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6

EVENT_NAMES = {
    CTRL_C_EVENT: "CTRL_C_EVENT",
    CTRL_BREAK_EVENT: "CTRL_BREAK_EVENT",
    CTRL_CLOSE_EVENT: "CTRL_CLOSE_EVENT",
    CTRL_LOGOFF_EVENT: "CTRL_LOGOFF_EVENT",
    CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN_EVENT",
}
#: Events after which Windows ends the process once the handler returns.
FINAL_EVENTS = frozenset({CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT})
#: Below the ~5 s Windows gives a console process after CTRL_CLOSE_EVENT before it kills it.
CLOSE_WAIT_SECONDS = 4.5

#: Every handler ever installed: Windows may call one until the process ends, and a collected
#: ctypes callback would crash it, so they are never released.
_KEEP_ALIVE: list[object] = []

log = logging.getLogger("luna.daemon")


class ConsoleStopHandler:
    """Turns console control events into ``request_stop(reason)`` on the daemon's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        request_stop: Callable[[str], None],
        *,
        close_wait: float = CLOSE_WAIT_SECONDS,
    ):
        self._loop = loop
        self._request_stop = request_stop
        self._close_wait = close_wait
        self._stopped = threading.Event()
        self.events: list[str] = []

    def stopped(self) -> None:
        """The daemon has closed (called on the loop side): a waiting handler may return now."""
        self._stopped.set()

    def __call__(self, event: int) -> bool:
        """Windows' HandlerRoutine: True = handled (no further handler runs)."""
        name = EVENT_NAMES.get(event)
        if name is None:
            return False  # not ours: let the next handler (or the default) decide
        self.events.append(name)
        try:
            self._loop.call_soon_threadsafe(self._request_stop, f"console {name}")
        except RuntimeError:  # the loop is closed: the daemon has already stopped
            return True
        if event in FINAL_EVENTS and not self._stopped.wait(self._close_wait):
            # Returning lets Windows end the process; say so while the log can still be written.
            log.warning(
                "%s: the daemon did not stop within %.1fs; Windows ends it now", name, self._close_wait
            )
        return True


def install_stop_handler(
    loop: asyncio.AbstractEventLoop,
    request_stop: Callable[[str], None],
    *,
    platform: str = sys.platform,
    api: WindowsApi | None = None,
    close_wait: float = CLOSE_WAIT_SECONDS,
) -> tuple[ConsoleStopHandler, Callable[[], None]] | None:
    """Register a :class:`ConsoleStopHandler` on Windows; returns it and its remover, or None
    (not Windows, or the registration failed: then a warning says so and signals still work)."""
    if platform != "win32":
        return None
    api = api or WINDOWS_API
    handler = ConsoleStopHandler(loop, request_stop, close_wait=close_wait)
    try:
        token = api.add_console_handler(handler)
    except OSError as exc:
        log.warning("cannot install the console control handler (%s); Ctrl+C still stops the daemon", exc)
        return None
    _KEEP_ALIVE.append((handler, token))

    def remove() -> None:
        try:
            api.remove_console_handler(token)
        except OSError as exc:
            log.debug("removing the console control handler failed: %s", exc)

    return handler, remove
