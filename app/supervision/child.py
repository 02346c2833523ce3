"""A managed child process: start, know when it is ready, drain its output, restart it, stop it, and
never leave it behind.

Owns :class:`ManagedChild`, the one supervision service of the app, used for the embedded LLM
server (:mod:`app.narrates.llm.embedded`) and the Luna daemon (the GUI's daemon supervisor):

* readiness is the caller's: :class:`ReadyWhenLine` (a parser of output lines, e.g. the daemon's
  ``LUNA_DAEMON_READY {json}``) or :class:`ReadyWhenProbe` (an async probe, e.g. an HTTP GET),
  bounded by :attr:`ChildSpec.ready_timeout_s`;
* stdout and stderr are read continuously (a full pipe never blocks the child) into a bounded
  ring buffer (:attr:`ManagedChild.output`) and published as :class:`Output` events;
* a crash (or a start that never gets ready) is followed by a restart with exponential backoff,
  at most :attr:`RestartPolicy.max_restarts` in a row, then :class:`GaveUp` says why and carries
  the last output lines;
* :meth:`ManagedChild.stop` runs the caller's graceful step, then terminates, then kills, each
  bounded (:class:`StopPolicy`);
* no orphans: see :mod:`app.supervision.orphans` (``PR_SET_PDEATHSIG`` on Linux, a kill-on-close
  Job Object on Windows). On POSIX the child gets its own session, so a terminal's Ctrl+C reaches
  only the app, which stops the child in order.

Events are frozen dataclasses (:class:`Starting`, :class:`Ready`, :class:`Output`, :class:`Exited`,
:class:`Restarting`, :class:`GaveUp`, :class:`Stopped`) delivered to callbacks
(:meth:`ManagedChild.subscribe`) and async iterators (:meth:`ManagedChild.events`).

Runs on one asyncio event loop, and the child must be started from that loop's thread: on Linux
the parent-death signal fires when the *thread* that forked the child exits (asyncio forks in
the loop's thread; with qasync that is the GUI thread, which lives as long as the app). Not
thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.supervision.orphans import WINDOWS_CREATION_FLAGS, JobObjectError, WindowsJob, linux_preexec

log = logging.getLogger("app.supervision")

OutputStream = Literal["stdout", "stderr"]


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    """What to run: ``argv`` (``argv[0]`` an executable path or name), ``env`` (the whole environment;
    ``None`` inherits the parent's), ``cwd``, and how long a start may take to become ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    cwd: Path | str | None = None
    ready_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        if not self.argv:
            raise ValueError(f"child {self.name!r}: argv is empty")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"child {self.name!r}: ready_timeout_s must be positive")


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after a crash: at most ``max_restarts`` in a row (0 = never restart), waiting
    ``backoff_initial_s`` doubled each time up to ``backoff_max_s``. A child that stayed ready for
    ``stable_after_s`` starts a fresh count. An exit code in ``fatal_exit_codes`` gives up at once."""

    max_restarts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    stable_after_s: float = 60.0
    #: Exit codes that mean "this start can never succeed" (bad config, port taken): no restart.
    fatal_exit_codes: frozenset[int] = frozenset()

    def delay(self, failures: int) -> float:
        return min(self.backoff_max_s, self.backoff_initial_s * (2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class StopPolicy:
    """Bounds of the three stop steps: graceful (the caller's step, then waiting for the exit),
    terminate (SIGTERM / TerminateProcess), kill."""

    graceful_timeout_s: float = 5.0
    terminate_timeout_s: float = 5.0
    kill_timeout_s: float = 5.0


@dataclass(frozen=True)
class ReadyWhenLine:
    """Ready when ``parse(line)`` returns something other than ``None`` (that value becomes
    :attr:`Ready.info`); ``stream`` limits which output is parsed."""

    parse: Callable[[str], Any]
    stream: OutputStream | Literal["any"] = "any"

    @classmethod
    def json_after(cls, prefix: str, stream: OutputStream | Literal["any"] = "any") -> ReadyWhenLine:
        """Ready at a line ``PREFIX {json}`` (e.g. the daemon's ``LUNA_DAEMON_READY {...}``); the
        parsed JSON becomes :attr:`Ready.info`. A line with the prefix but broken JSON is ignored."""
        marker = prefix.rstrip() + " "

        def parse(line: str) -> Any:
            if not line.startswith(marker):
                return None
            try:
                return json.loads(line[len(marker) :])
            except ValueError:
                return None

        return cls(parse, stream)


@dataclass(frozen=True)
class ReadyWhenProbe:
    """Ready when the coroutine ``probe()`` returns something other than ``None``; it is called every
    ``interval_s`` while the child runs (exceptions count as "not yet")."""

    probe: Callable[[], Awaitable[Any]]
    interval_s: float = 0.1


Readiness = ReadyWhenLine | ReadyWhenProbe | None


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Starting:
    """A process is about to be spawned (``attempt`` counts every spawn of this supervision run)."""

    name: str
    attempt: int
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Ready:
    """The readiness check passed; ``info`` is what it returned (e.g. the daemon's ready JSON)."""

    name: str
    pid: int
    info: Any
    elapsed_s: float


@dataclass(frozen=True)
class Output:
    """One line of the child's stdout or stderr (newline stripped, cut at ``max_line_chars``)."""

    name: str
    stream: OutputStream
    line: str


@dataclass(frozen=True)
class Exited:
    """The process ended; ``expected`` is True when :meth:`ManagedChild.stop` asked for it."""

    name: str
    pid: int
    returncode: int | None
    expected: bool


@dataclass(frozen=True)
class Restarting:
    """The child failed (``reason``); it is started again after ``delay`` seconds (``attempt`` of the cap)."""

    name: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True)
class GaveUp:
    """Supervision ended without a running child: ``reason`` and the last output lines say why."""

    name: str
    reason: str
    last_output: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stopped:
    """Supervision ended because :meth:`ManagedChild.stop` was called."""

    name: str


ChildEvent = Starting | Ready | Output | Exited | Restarting | GaveUp | Stopped


class ChildState(enum.Enum):
    """Where supervision stands (see :attr:`ManagedChild.state`)."""

    IDLE = "idle"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    GAVE_UP = "gave_up"


class ChildError(Exception):
    """Base class of supervision failures."""


class ChildGaveUp(ChildError):
    """The child could not be brought up (or kept up) within the restart cap."""

    def __init__(self, event: GaveUp) -> None:
        tail = "\n".join(event.last_output[-10:])
        super().__init__(f"{event.name}: {event.reason}" + (f"\nlast output:\n{tail}" if tail else ""))
        self.event = event
        self.reason = event.reason
        self.last_output = event.last_output


class ChildStopped(ChildError):
    """:meth:`ManagedChild.stop` was called before the child became ready."""


# --- the service ---------------------------------------------------------------------------


@dataclass
class _Subscriber:
    """One :meth:`ManagedChild.events` iterator; at most ``cap`` events wait (oldest output dropped first)."""

    cap: int
    items: collections.deque[ChildEvent] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def push(self, event: ChildEvent) -> None:
        self.items.append(event)
        if len(self.items) > self.cap:
            for index, queued in enumerate(self.items):
                if isinstance(queued, Output):
                    del self.items[index]
                    self.dropped += 1
                    break
        self.wakeup.set()


class EventStream:
    """An async iterator over one subscription of :meth:`ManagedChild.events`."""

    def __init__(self, child: ManagedChild, subscriber: _Subscriber, until_end: bool) -> None:
        self._child = child
        self._subscriber = subscriber
        self._until_end = until_end
        self._done = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ChildEvent:
        if self._done:
            raise StopAsyncIteration
        subscriber = self._subscriber
        try:
            while not subscriber.items:
                subscriber.wakeup.clear()
                await subscriber.wakeup.wait()
        except BaseException:
            await self.aclose()
            raise
        event = subscriber.items.popleft()
        if self._until_end and isinstance(event, Stopped | GaveUp):
            await self.aclose()  # this event is the last one delivered
        return event

    async def aclose(self) -> None:
        """Unsubscribe; the iteration ends."""
        if not self._done:
            self._done = True
            with contextlib.suppress(ValueError):
                self._child._subscribers.remove(self._subscriber)


def popen_options(platform: str, *, job: WindowsJob | None = None) -> dict[str, Any]:
    """The subprocess keywords that make a child die with us on ``platform`` (``sys.platform``)."""
    if platform == "win32":
        return {"creationflags": WINDOWS_CREATION_FLAGS}
    options: dict[str, Any] = {"start_new_session": True}
    if platform.startswith("linux"):
        options["preexec_fn"] = linux_preexec()
    return options


class ManagedChild:
    """Supervises one child process described by a :class:`ChildSpec` (see the module docstring).

    ``graceful_stop(child)`` is the first step of :meth:`stop` (e.g. the daemon's shutdown op);
    ``job`` replaces the Windows Job Object (any object with ``assign(pid)``; tests use it to
    inject failures). ``output_lines`` bounds the ring buffer; lines longer than
    ``max_line_chars`` are cut.
    """

    def __init__(
        self,
        spec: ChildSpec,
        *,
        ready: Readiness = None,
        restart: RestartPolicy | None = None,
        stop: StopPolicy | None = None,
        graceful_stop: Callable[[ManagedChild], Awaitable[None]] | None = None,
        on_event: Callable[[ChildEvent], None] | None = None,
        output_lines: int = 1000,
        max_line_chars: int = 8192,
        job: Any | None = None,
    ) -> None:
        self.spec = spec
        self.readiness = ready
        self.restart_policy = restart or RestartPolicy()
        self.stop_policy = stop or StopPolicy()
        self._graceful_stop = graceful_stop
        self._output: collections.deque[str] = collections.deque(maxlen=max(1, output_lines))
        self._max_line_chars = max_line_chars
        self._callbacks: list[Callable[[ChildEvent], None]] = [on_event] if on_event else []
        self._subscribers: list[_Subscriber] = []
        self._job = job
        self._state = ChildState.IDLE
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stop_requested = asyncio.Event()
        self._ready_waiters: list[asyncio.Future[Ready]] = []
        self._line_ready: asyncio.Future[Any] | None = None
        self._last_ready: Ready | None = None
        self._last_gave_up: GaveUp | None = None
        self.returncode: int | None = None

    # --- observation -------------------------------------------------------------------------

    @property
    def state(self) -> ChildState:
        return self._state

    @property
    def pid(self) -> int | None:
        """The running process's id (``None`` when none runs)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def ready_info(self) -> Any:
        """What the readiness check returned for the current run (``None`` before ready)."""
        return self._last_ready.info if self._last_ready and self._state is ChildState.READY else None

    @property
    def output(self) -> tuple[str, ...]:
        """The last output lines (stdout and stderr interleaved as they arrived)."""
        return tuple(self._output)

    @property
    def gave_up(self) -> GaveUp | None:
        """The last :class:`GaveUp` event, if the child gave up."""
        return self._last_gave_up

    def subscribe(self, callback: Callable[[ChildEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event (in the loop's thread); returns an unsubscribe function."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def events(self, *, until_end: bool = True, max_queued: int = 10_000) -> EventStream:
        """Events from this call on (subscribed at once, so none is missed before the first
        ``await``); with ``until_end`` the iteration ends after :class:`Stopped` / :class:`GaveUp`.
        ``async for event in child.events(): ...``; ``aclose()`` (or leaving the loop) unsubscribes."""
        subscriber = _Subscriber(max_queued)
        self._subscribers.append(subscriber)
        return EventStream(self, subscriber, until_end)

    def _emit(self, event: ChildEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("%s: an event callback failed on %r", self.spec.name, type(event).__name__)
        for subscriber in self._subscribers:
            subscriber.push(event)

    # --- control -----------------------------------------------------------------------------

    async def __aenter__(self) -> ManagedChild:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> Ready:
        """Start the child (if it is not running) and wait until it is ready.

        Raises :class:`ChildGaveUp` when it could not be brought up within the restart cap,
        :class:`ChildStopped` when :meth:`stop` came first.
        """
        if self._task is None or self._task.done():
            self._stop_requested.clear()
            self._last_gave_up = None
            self.returncode = None
            self._task = asyncio.create_task(self._supervise(), name=f"supervise:{self.spec.name}")
        return await self.wait_ready()

    async def wait_ready(self) -> Ready:
        """Wait until the child is ready (now, or after the current start / restart)."""
        if self._state is ChildState.READY and self._last_ready is not None:
            return self._last_ready
        if self._task is None or self._task.done():
            if self._last_gave_up is not None:
                raise ChildGaveUp(self._last_gave_up)
            raise ChildStopped(f"{self.spec.name} is not running")
        waiter: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(waiter)
        try:
            return await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._ready_waiters.remove(waiter)

    async def stop(self) -> None:
        """Stop the child: graceful step, terminate, kill (each bounded); no restart follows."""
        task = self._task
        if task is None or task.done():
            return
        self._stop_requested.set()
        policy = self.stop_policy
        bound = policy.graceful_timeout_s + policy.terminate_timeout_s + policy.kill_timeout_s + 5.0
        try:
            await asyncio.wait_for(asyncio.shield(task), bound)
        except TimeoutError:
            log.error(
                "%s: supervision did not end within %.0f s of stop(); cancelling it", self.spec.name, bound
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def restart(self) -> Ready:
        """Stop the child, then start it again with a fresh restart count."""
        await self.stop()
        return await self.start()

    # --- supervision loop --------------------------------------------------------------------

    def _set_state(self, state: ChildState) -> None:
        self._state = state

    def _resolve_waiters(self, result: Ready | BaseException) -> None:
        for waiter in self._ready_waiters:
            if waiter.done():
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)
        self._ready_waiters.clear()

    async def _supervise(self) -> None:
        failures = 0
        attempt = 0
        try:
            while True:
                attempt += 1
                outcome, reason, ran_ready_s = await self._run_once(attempt)
                if outcome == "stopped":
                    break
                if ran_ready_s >= self.restart_policy.stable_after_s:
                    failures = 0
                failures += 1
                if outcome == "failed" and self.returncode in self.restart_policy.fatal_exit_codes:
                    self._give_up(f"{reason}, which means it cannot start as configured; not restarted")
                    return
                if failures > self.restart_policy.max_restarts or outcome == "fatal":
                    tries = f"{failures} failure{'s' if failures != 1 else ''} in a row"
                    self._give_up(
                        reason if outcome == "fatal" else f"{reason} ({tries}; restart cap reached)"
                    )
                    return
                delay = self.restart_policy.delay(failures)
                self._set_state(ChildState.BACKOFF)
                self._emit(Restarting(self.spec.name, failures, delay, reason))
                log.info(
                    "%s: %s; restarting in %.2f s (%d of %d)",
                    self.spec.name,
                    reason,
                    delay,
                    failures,
                    self.restart_policy.max_restarts,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
                if self._stop_requested.is_set():
                    break
            self._set_state(ChildState.STOPPED)
            self._resolve_waiters(ChildStopped(f"{self.spec.name} was stopped"))
            self._emit(Stopped(self.spec.name))
        except asyncio.CancelledError:
            self._kill_now()
            self._set_state(ChildState.STOPPED)
            self._resolve_waiters(ChildStopped(f"{self.spec.name}: supervision was cancelled"))
            raise
        except Exception as exc:  # a bug here must not leave a child behind or a waiter hanging
            log.exception("%s: supervision failed", self.spec.name)
            self._kill_now()
            self._give_up(f"supervision failed: {exc!r}")

    def _give_up(self, reason: str) -> None:
        event = GaveUp(self.spec.name, reason, tuple(self._output)[-20:])
        self._last_gave_up = event
        self._set_state(ChildState.GAVE_UP)
        log.error("%s: gave up: %s", self.spec.name, reason)
        self._resolve_waiters(ChildGaveUp(event))
        self._emit(event)

    def _kill_now(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            self._signal(process, kill=True)

    async def _spawn(self) -> asyncio.subprocess.Process:
        spec = self.spec
        options = popen_options(sys.platform)
        if sys.platform == "win32" and self._job is None:
            self._job = WindowsJob()
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(spec.env) if spec.env is not None else None,
            cwd=spec.cwd,
            **options,
        )
        if self._job is not None:
            try:
                self._job.assign(process.pid)
            except (JobObjectError, OSError) as exc:
                self._signal(process, kill=True)
                await process.wait()
                raise JobObjectError(
                    getattr(exc, "errno", 0) or 0, f"could not guard the child with a Job Object: {exc}"
                ) from exc
        return process

    async def _run_once(self, attempt: int) -> tuple[str, str, float]:
        """One process lifetime: ``("stopped"|"failed"|"fatal", reason, seconds it was ready)``."""
        spec = self.spec
        self._set_state(ChildState.STARTING)
        self._emit(Starting(spec.name, attempt, spec.argv))
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._line_ready = loop.create_future() if isinstance(self.readiness, ReadyWhenLine) else None
        try:
            process = await self._spawn()
        except JobObjectError as exc:
            return "fatal", str(exc), 0.0
        except OSError as exc:
            return "fatal", f"could not start {spec.argv[0]!r}: {exc}", 0.0
        self._process = process
        drains = [
            asyncio.create_task(self._drain(process.stdout, "stdout"), name=f"{spec.name}:stdout"),
            asyncio.create_task(self._drain(process.stderr, "stderr"), name=f"{spec.name}:stderr"),
        ]
        exit_task = asyncio.create_task(process.wait(), name=f"{spec.name}:wait")
        stop_task = asyncio.create_task(self._stop_requested.wait(), name=f"{spec.name}:stop")
        ready_task = asyncio.create_task(self._wait_ready(process), name=f"{spec.name}:ready")
        ready_at: float | None = None
        try:
            done, _ = await asyncio.wait(
                {exit_task, stop_task, ready_task},
                timeout=spec.ready_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ready_task in done and (ready_task.cancelled() or ready_task.exception() is not None):
                # The probe saw the process end: let the exit be collected, it is not a timeout.
                await asyncio.wait({exit_task}, timeout=self.stop_policy.kill_timeout_s)
            elif ready_task in done:
                ready_at = time.monotonic()
                event = Ready(spec.name, process.pid, ready_task.result(), ready_at - started)
                self._last_ready = event
                self._set_state(ChildState.READY)
                self._emit(event)
                self._resolve_waiters(event)
                await asyncio.wait({exit_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if self._stop_requested.is_set() and not exit_task.done():
                await self._shutdown(process, exit_task, graceful=ready_at is not None)
                await self._finish(process, drains, expected=True)
                return "stopped", "stopped", 0.0
            if not exit_task.done():  # not ready in time
                self._signal(process, kill=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exit_task), self.stop_policy.terminate_timeout_s)
                if not exit_task.done():
                    self._signal(process, kill=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(exit_task), self.stop_policy.kill_timeout_s)
                await self._finish(process, drains, expected=False)
                return "failed", f"not ready within {spec.ready_timeout_s:g} s", 0.0
            await self._finish(process, drains, expected=self._stop_requested.is_set())
            if self._stop_requested.is_set():
                return "stopped", "stopped", 0.0
            code = process.returncode
            if ready_at is None:
                return "failed", f"exited with code {code} before it was ready", 0.0
            return "failed", f"exited with code {code}", time.monotonic() - ready_at
        finally:
            for task in (stop_task, ready_task, exit_task):
                if not task.done():
                    task.cancel()
            for task in (stop_task, ready_task, exit_task):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if process.returncode is None:  # cancelled mid-way: never leave it running
                self._signal(process, kill=True)

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> Any:
        readiness = self.readiness
        if readiness is None:
            return None
        if isinstance(readiness, ReadyWhenLine):
            assert self._line_ready is not None
            return await self._line_ready
        while process.returncode is None:
            try:
                info = await readiness.probe()
            except Exception as exc:  # "not yet"
                log.debug("%s: readiness probe: %r", self.spec.name, exc)
                info = None
            if info is not None:
                return info
            await asyncio.sleep(readiness.interval_s)
        raise ChildError("exited before ready")

    async def _finish(
        self, process: asyncio.subprocess.Process, drains: list[asyncio.Task[None]], *, expected: bool
    ) -> None:
        """After the exit: collect the last output (bounded: a grandchild may hold the pipe), report it."""
        _, pending = await asyncio.wait(drains, timeout=2.0)
        for task in pending:
            task.cancel()
        for task in drains:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.returncode = process.returncode
        self._emit(Exited(self.spec.name, process.pid, process.returncode, expected))

    async def _shutdown(
        self, process: asyncio.subprocess.Process, exit_task: asyncio.Task[Any], *, graceful: bool
    ) -> None:
        self._set_state(ChildState.STOPPING)
        policy = self.stop_policy
        name = self.spec.name
        if graceful and self._graceful_stop is not None:
            try:
                async with asyncio.timeout(policy.graceful_timeout_s):
                    await self._graceful_stop(self)
                    await asyncio.shield(exit_task)
            except TimeoutError:
                log.info(
                    "%s: no exit within %.1f s of the graceful step; terminating",
                    name,
                    policy.graceful_timeout_s,
                )
            except Exception as exc:
                log.info("%s: graceful step failed (%r); terminating", name, exc)
        for kill, bound in ((False, policy.terminate_timeout_s), (True, policy.kill_timeout_s)):
            if exit_task.done():
                return
            self._signal(process, kill=kill)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exit_task), bound)
        if not exit_task.done():
            log.error("%s: pid %s survived SIGKILL for %.1f s", name, process.pid, policy.kill_timeout_s)

    def _signal(self, process: asyncio.subprocess.Process, *, kill: bool) -> None:
        if process.returncode is not None:
            return
        try:
            if sys.platform == "win32":
                if kill and self._job is not None:
                    # the contract's last step: the whole job, so no grandchild survives
                    try:
                        self._job.terminate(1)
                        return
                    except OSError as exc:
                        log.warning(
                            "%s: TerminateJobObject failed (%s); killing the process", self.spec.name, exc
                        )
                process.kill() if kill else process.terminate()
            else:
                # The child leads its own session (popen_options): signal the group, so helpers it
                # started go too.
                os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            process.kill() if kill else process.terminate()

    async def _drain(self, reader: asyncio.StreamReader | None, stream: OutputStream) -> None:
        if reader is None:
            return
        pending = b""
        limit = self._max_line_chars
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            pending += chunk
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    break
                self._line(stream, pending[:newline])
                pending = pending[newline + 1 :]
            if len(pending) > limit * 4:  # a line without end: cut it rather than hold it all
                self._line(stream, pending)
                pending = b""
        if pending:
            self._line(stream, pending)

    def _line(self, stream: OutputStream, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if len(line) > self._max_line_chars:
            line = line[: self._max_line_chars] + " …[cut]"
        self._output.append(line)
        self._emit(Output(self.spec.name, stream, line))
        readiness = self.readiness
        future = self._line_ready
        if isinstance(readiness, ReadyWhenLine) and future is not None and not future.done():
            if readiness.stream not in ("any", stream):
                return
            try:
                info = readiness.parse(line)
            except Exception as exc:
                log.info("%s: readiness parser failed on %r: %r", self.spec.name, line[:200], exc)
                return
            if info is not None:
                future.set_result(info)
