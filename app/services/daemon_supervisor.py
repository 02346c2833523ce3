"""The daemon supervisor: start, find, watch, restart and stop the operator's Luna daemon.

Owns the daemon-specific part of supervision; the generic child-process machinery (spawn with
no-orphan guarantees, stdout/stderr draining, readiness from a line parser, restart with
backoff and a cap, terminate → kill) is :mod:`app.supervision.child`. On top of it this adds:

* **launch** — ``python -m daemon --config daemon.toml --port P --ws-port W`` from the operator
  settings (:mod:`app.services.settings`). On Windows the venv launcher is skipped by running
  ``sys._base_executable`` with ``__PYVENV_LAUNCHER__`` set (as :mod:`multiprocessing` does),
  so the pid we hold is the daemon's; a frozen app runs the bundled ``luna-daemon`` executable.
* **ready** — from the ``LUNA_DAEMON_READY`` line (:func:`daemon.wire.ready.parse_ready_line`);
  the READY pid is trusted over the launched pid.
* **attach** — before launching, a daemon already answering ``status`` on the configured port
  is attached to instead (state ``attached``); quitting the app leaves it running.
* **stop** — the authenticated ``shutdown`` op (token from :mod:`daemon.auth`), then the child
  manager's terminate and kill after the grace period.
* **give up** — a daemon exiting with ``START_FAILED`` (bad config, port taken) is not
  restarted; crashes are restarted with backoff until the cap, then ``gave_up`` with the reason.

Observers get :class:`SupervisorState` snapshots and :class:`LogLine` records through
:meth:`DaemonSupervisor.add_listener`. Runs on one asyncio loop (the GUI's qasync loop);
never touches Qt.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.paths import bundled_executable, is_frozen
from app.services.settings import DaemonSettings, write_daemon_config
from app.supervision.child import (
    ChildError,
    ChildEvent,
    ChildSpec,
    Exited,
    GaveUp,
    ManagedChild,
    Output,
    Ready,
    ReadyWhenLine,
    Restarting,
    RestartPolicy,
    StopPolicy,
)
from daemon import auth
from daemon.wire.client import AsyncDaemonClient, DaemonError, DaemonUnavailable
from daemon.wire.ready import DaemonExit, ReadyInfo, ReadyLineError, parse_ready_line

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: build.spec's console executable of the daemon, started when the app is frozen.
DAEMON_EXECUTABLE = "luna-daemon"


class Phase(enum.Enum):
    """Where the supervised daemon is."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"  # our child, ready
    ATTACHED = "attached"  # someone else's daemon on the configured port
    RESTARTING = "restarting"
    STOPPING = "stopping"
    GAVE_UP = "gave_up"

    @property
    def up(self) -> bool:
        return self in (Phase.RUNNING, Phase.ATTACHED)


@dataclass(frozen=True)
class SupervisorState:
    """One observable state of the supervisor (immutable; a new one per change)."""

    phase: Phase
    detail: str = ""
    ready: ReadyInfo | None = None
    restarts: int = 0
    last_exit: int | None = None

    def describe(self) -> str:
        if self.phase is Phase.RUNNING and self.ready:
            return f"running (pid {self.ready.pid}, port {self.ready.port}, status ws {self.ready.ws_port})"
        if self.phase is Phase.ATTACHED and self.ready:
            return f"attached to a running daemon on port {self.ready.port} (pid {self.ready.pid})"
        return f"{self.phase.value}: {self.detail}" if self.detail else self.phase.value


@dataclass(frozen=True)
class LogLine:
    """One line of the daemon's stdout or stderr."""

    stream: str  # "stdout" | "stderr"
    text: str


SupervisorListener = Callable[[SupervisorState | LogLine], None]


@dataclass(frozen=True)
class SupervisorOptions:
    """Timing and restart policy (seconds); tests shorten them."""

    ready_timeout: float = 120.0
    stop_grace: float = 10.0
    attach_probe_timeout: float = 1.5
    shutdown_op_timeout: float = 3.0
    max_restarts: int = 5
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    # A daemon that stayed up this long resets the restart count.
    stable_after: float = 60.0
    extra_args: tuple[str, ...] = ()
    log_lines: int = 5000
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class SupervisorError(RuntimeError):
    """The daemon could not be started or reached; the message says why, for the status bar."""


def daemon_command(extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """argv and extra env to run the daemon from this interpreter or this bundle."""
    if is_frozen():
        # build.spec's console executable beside the app: sys.executable is the app itself here.
        return [str(bundled_executable(DAEMON_EXECUTABLE)), *extra], {}
    python = sys.executable
    env: dict[str, str] = {}
    base = getattr(sys, "_base_executable", None)
    if sys.platform == "win32" and base and os.path.normcase(base) != os.path.normcase(python):
        # The venv's python.exe is a launcher that starts a second process; run the base
        # interpreter and tell it which venv it belongs to (what multiprocessing does).
        env["__PYVENV_LAUNCHER__"] = python
        python = base
    return [python, "-m", "daemon", *extra], env


class DaemonSupervisor:
    """Runs or attaches to the daemon (see module docstring); one per app."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        options: SupervisorOptions | None = None,
        config_dir: Path | None = None,
        token_reader: Callable[[], str | None] = auth.read_token,
    ):
        self.settings = settings
        self.options = options or SupervisorOptions()
        self._config_dir = config_dir
        self._read_token = token_reader
        self._listeners: list[SupervisorListener] = []
        self.state = SupervisorState(Phase.STOPPED)
        self.log_tail: deque[LogLine] = deque(maxlen=self.options.log_lines)
        self._child: ManagedChild | None = None
        self._starter: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()

    # ------------------------------------------------------------------ observation

    def add_listener(self, listener: SupervisorListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def ready(self) -> ReadyInfo | None:
        return self.state.ready if self.state.phase.up else None

    @property
    def child_pid(self) -> int | None:
        """The pid of the daemon child we launched (None when attached or stopped)."""
        return self._child.pid if self._child is not None else None

    async def wait_up(self, timeout: float | None = None) -> ReadyInfo:
        """Wait until the daemon is running or attached; SupervisorError if it gives up."""
        async with asyncio.timeout(timeout):
            while True:
                if self.state.phase.up and self.state.ready:
                    return self.state.ready
                if self.state.phase in (Phase.GAVE_UP, Phase.STOPPED) and self.state.detail:
                    raise SupervisorError(self.state.detail)
                self._up.clear()
                await self._up.wait()

    def _set(self, state: SupervisorState) -> None:
        self.state = state
        self._up.set()
        level = logging.WARNING if state.phase is Phase.GAVE_UP else logging.INFO
        log.log(level, "daemon %s", state.describe())
        self._emit(state)

    def _emit(self, item: SupervisorState | LogLine) -> None:
        for listener in list(self._listeners):
            try:
                listener(item)
            except Exception:
                log.exception("supervisor listener failed")

    # ------------------------------------------------------------------ control

    async def start(self) -> SupervisorState:
        """Attach to a daemon on the configured port, else launch ours; returns at once
        after launching (readiness arrives as a state change, see :meth:`wait_up`)."""
        async with self._lock:
            if self.state.phase.up or self.state.phase in (Phase.STARTING, Phase.RESTARTING):
                return self.state
            found = await self._probe_running()
            if found is not None:
                self._set(SupervisorState(Phase.ATTACHED, "a daemon already serves this port", found))
                return self.state
            self._launch()
            return self.state

    async def stop(self, *, detach_attached: bool = False) -> None:
        """Stop our child gracefully (shutdown op → terminate → kill). An attached daemon is
        shut down too, unless ``detach_attached`` (quitting the app leaves it running)."""
        async with self._lock:
            phase = self.state.phase
            if phase is Phase.ATTACHED:
                ready = self.state.ready
                if not detach_attached and ready is not None:
                    self._set(replace(self.state, phase=Phase.STOPPING, detail="shutdown requested"))
                    await self._shutdown_op(ready)
                self._set(SupervisorState(Phase.STOPPED, "detached" if detach_attached else ""))
                return
            child, self._child = self._child, None
            if child is None:
                if phase is not Phase.STOPPED:
                    self._set(SupervisorState(Phase.STOPPED))
                return
            self._set(replace(self.state, phase=Phase.STOPPING, detail=""))
            await child.stop()
            if self._starter is not None:
                with contextlib.suppress(asyncio.CancelledError, ChildError):
                    await self._starter
            self._set(SupervisorState(Phase.STOPPED, restarts=self.state.restarts))

    async def restart(self) -> SupervisorState:
        await self.stop()
        return await self.start()

    async def aclose(self) -> None:
        """For app quit: stop our child, leave an attached daemon running."""
        await self.stop(detach_attached=True)

    # ------------------------------------------------------------------ internals

    def _daemon_argv(self) -> tuple[list[str], dict[str, str]]:
        try:
            config_file = write_daemon_config(self.settings, self._config_dir)
        except OSError as exc:  # full disk, read-only or missing config dir: say so, don't crash start()
            raise SupervisorError(f"cannot write the daemon's config file: {exc}") from exc
        args = [
            "--config",
            str(config_file),
            "--host",
            self.settings.host,
            "--port",
            str(self.settings.port),
            "--ws-port",
            str(self.settings.ws_port),
            *self.options.extra_args,
        ]
        return daemon_command(args)

    def _launch(self) -> None:
        argv, extra_env = self._daemon_argv()
        options = self.options
        spec = ChildSpec(
            name="luna-daemon",
            argv=tuple(argv),
            env={**os.environ, **dict(options.env), **extra_env},
            cwd=None if getattr(sys, "frozen", False) else str(REPO_ROOT),
            ready_timeout_s=options.ready_timeout,
        )
        child = ManagedChild(
            spec,
            ready=ReadyWhenLine(_ready_parser, stream="stdout"),
            restart=RestartPolicy(
                max_restarts=options.max_restarts,
                backoff_initial_s=options.restart_backoff,
                backoff_max_s=options.restart_backoff_max,
                stable_after_s=options.stable_after,
                # Bad config or a taken port: the same start fails the same way.
                fatal_exit_codes=frozenset({int(DaemonExit.START_FAILED), int(DaemonExit.NO_STDOUT)}),
            ),
            stop=StopPolicy(graceful_timeout_s=options.stop_grace),
            graceful_stop=self._graceful_stop,
            on_event=self._on_child_event,
            output_lines=options.log_lines,
        )
        self._child = child
        self._set(SupervisorState(Phase.STARTING, "launching the daemon", restarts=self.state.restarts))
        self._starter = asyncio.get_running_loop().create_task(
            self._run_child(child), name="daemon-child-start"
        )

    async def _run_child(self, child: ManagedChild) -> None:
        try:
            await child.start()
        except ChildError:
            pass  # reported through the GaveUp / Stopped events

    def _on_child_event(self, event: ChildEvent) -> None:
        if isinstance(event, Output):
            line = LogLine(event.stream, event.line)
            self.log_tail.append(line)
            self._emit(line)
        elif isinstance(event, Ready):
            self._set(SupervisorState(Phase.RUNNING, "", event.info, self.state.restarts))
        elif isinstance(event, Exited) and not event.expected:
            self.state = replace(self.state, last_exit=event.returncode)
        elif isinstance(event, Restarting):
            self._set(
                SupervisorState(
                    Phase.RESTARTING,
                    f"daemon {event.reason}; restart {event.attempt} of {self.options.max_restarts} "
                    f"in {event.delay:.1f} s",
                    None,
                    event.attempt,
                    self.state.last_exit,
                )
            )
        elif isinstance(event, GaveUp):
            self._child = None
            refused = self.state.last_exit == int(DaemonExit.START_FAILED)
            reason = (
                "the daemon refused to start (configuration or port problem)" if refused else event.reason
            )
            self._set(
                SupervisorState(
                    Phase.GAVE_UP,
                    _explain(reason, self.log_tail),
                    None,
                    self.state.restarts,
                    self.state.last_exit,
                )
            )

    async def _graceful_stop(self, _child: ManagedChild) -> None:
        """The child manager's first stop step: the authenticated shutdown op."""
        ready = self.state.ready
        if ready is not None:
            await self._shutdown_op(ready)

    async def _shutdown_op(self, ready: ReadyInfo) -> None:
        client = self._control_client(ready.host, ready.port, self.options.shutdown_op_timeout)
        try:
            async with asyncio.timeout(self.options.shutdown_op_timeout):
                await client.shutdown()
        except (DaemonError, DaemonUnavailable, OSError, TimeoutError) as exc:
            log.info("shutdown op failed (%s); the child manager terminates the daemon", exc)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    def _control_client(self, host: str, port: int, timeout: float) -> AsyncDaemonClient:
        """A short-lived client for one control call (probe, shutdown): the token, no shared memory."""
        return AsyncDaemonClient(
            host,
            port,
            token=self._token(),
            timeout=timeout,
            connect_timeout=timeout,
            shared_memory=False,
            client_name="luna-operator-supervisor",
        )

    def _token(self) -> str | None:
        try:
            return self._read_token()
        except OSError as exc:
            log.warning("cannot read the daemon token: %s", exc)
            return None

    async def _port_accepts(self) -> bool:
        """Whether something accepts TCP connections on the configured port."""
        try:
            async with asyncio.timeout(self.options.attach_probe_timeout):
                _, writer = await asyncio.open_connection(self.settings.host, self.settings.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _probe_running(self) -> ReadyInfo | None:
        """A ReadyInfo for a daemon already answering on the configured port, else None."""
        if self.settings.port == 0:
            return None
        client = self._control_client(
            self.settings.host, self.settings.port, self.options.attach_probe_timeout
        )
        try:
            async with asyncio.timeout(self.options.attach_probe_timeout * 2):
                status = await client.status()
        except DaemonUnavailable as exc:
            if not await self._port_accepts():
                return None  # nothing listens: ours to start
            error: Exception = exc
        except (DaemonError, OSError, TimeoutError, ValueError) as exc:
            error = exc
        else:
            error = None
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        if error is None:
            try:
                return attached_ready_info(self.settings, status)
            except ValueError as exc:
                error = exc
        raise SupervisorError(
            f"port {self.settings.port} on {self.settings.host} is in use but does not answer as a "
            f"Luna daemon ({error}); change the daemon port in Settings"
        )


def attached_ready_info(settings: DaemonSettings, status: Any) -> ReadyInfo:
    """The :class:`ReadyInfo` of a running daemon from its ``status`` answer; ValueError when
    the answer does not carry a usable pid and status port (another program, another version)."""
    if not isinstance(status, dict):
        raise ValueError(f"its status is {type(status).__name__}, not an object")
    ports = status.get("ports") or {}
    if not isinstance(ports, dict):
        raise ValueError(f"its status has ports = {ports!r:.40}")
    ws_port, pid = ports.get("ws") or settings.ws_port, status.get("pid") or 0
    for name, value, top in (("ports.ws", ws_port, 65535), ("pid", pid, 2**32 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"its status has {name} = {value!r:.40}")
    return ReadyInfo(settings.host, settings.port, ws_port, pid)


def _ready_parser(line: str) -> Any:
    try:
        return parse_ready_line(line)
    except ReadyLineError as exc:
        log.warning("daemon printed a malformed READY line: %s", exc)
        return None


def _explain(reason: str, tail: deque[LogLine]) -> str:
    """The reason plus the daemon's own last error line (its ``luna-daemon: …`` message, an
    ERROR record or an exception's last line), which is what an operator can act on."""
    for line in reversed(tail):
        text = line.text.strip()
        if line.stream != "stderr" or not text:
            continue
        if (
            text.startswith("luna-daemon:")
            or " ERROR " in text
            or " CRITICAL " in text
            or (text.split(":", 1)[0].endswith(("Error", "Exception")))
        ):
            return f"{reason}: {text}"
    return reason
