"""What a daemon tells its supervisor: the ``LUNA_DAEMON_READY`` line and the exit codes.

The daemon prints exactly one READY line on stdout once both ports are bound; a supervisor (the
operator app's daemon supervisor, the tests) waits on it instead of sleeping, and trusts the pid
in it rather than the pid of the process it launched (a venv launcher or a frozen bootloader can
sit in between). Pure functions and a frozen dataclass; no I/O, safe on any thread.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

READY_PREFIX = "LUNA_DAEMON_READY"


class DaemonExit(enum.IntEnum):
    """The daemon process's exit statuses (``python -m daemon`` / ``luna-daemon``)."""

    #: stopped cleanly: a signal, a console close event or the authenticated ``shutdown`` op
    OK = 0
    #: an unexpected crash (Python's own status for an uncaught exception)
    CRASHED = 1
    #: bad configuration, a port already in use, a device that cannot be used: restarting the same
    #: way will fail the same way, so a supervisor should not retry without a change
    START_FAILED = 2
    #: no stdout to print the READY line on (started with ``pythonw`` or as a windowed executable):
    #: launch the console executable with stdout piped; the reason is on stderr or in the log file
    NO_STDOUT = 3


class ReadyLineError(ValueError):
    """A line starts with the READY prefix but its payload is not the documented JSON object."""


@dataclass(frozen=True)
class ReadyInfo:
    """The bound addresses announced on stdout by the ``LUNA_DAEMON_READY`` line."""

    host: str
    port: int
    ws_port: int
    pid: int

    def line(self) -> str:
        payload = {"host": self.host, "port": self.port, "ws_port": self.ws_port, "pid": self.pid}
        return f"{READY_PREFIX} {json.dumps(payload, separators=(',', ':'))}"


def parse_ready_line(line: str) -> ReadyInfo | None:
    """Inverse of :meth:`ReadyInfo.line`: None for any other line, :class:`ReadyLineError` for a
    READY line whose payload is malformed (a supervisor must not mistake it for log output)."""
    line = line.strip()
    if not line.startswith(READY_PREFIX + " "):
        return None
    try:
        data = json.loads(line[len(READY_PREFIX) + 1 :])
    except ValueError as exc:
        raise ReadyLineError(f"READY line payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReadyLineError("READY line payload is not a JSON object")
    host = data.get("host")
    numbers = {key: data.get(key) for key in ("port", "ws_port", "pid")}
    if not isinstance(host, str) or not host:
        raise ReadyLineError("READY line has no host")
    for key, value in numbers.items():
        # bool is an int subclass: refuse it explicitly
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ReadyLineError(f"READY line field {key!r} is not a non-negative integer: {value!r}")
    if not (0 < numbers["port"] < 65536 and 0 < numbers["ws_port"] < 65536):
        raise ReadyLineError("READY line ports must be bound ports (1-65535)")
    return ReadyInfo(host, numbers["port"], numbers["ws_port"], numbers["pid"])
