"""An asyncio client of the daemon's status WebSocket that stays connected by itself.

:class:`AsyncStatusFeed` owns one connection to ``ws://HOST:PORT`` at a time and the task that
keeps it: it connects, turns every message into a typed one (``daemon/wire/status.py``),
hands it to every subscriber, and when the daemon goes away (a restart, a crash, a network
hiccup) reconnects with exponential backoff, forever, until :meth:`AsyncStatusFeed.aclose`.
Its own connection state is part of the stream as :class:`FeedStateChanged` events, so the
dashboard, the daemon supervisor and the Narrates health gate all see "connected /
reconnecting / offline" and the last error in the same order as the statuses.

A malformed message is reported as a :class:`MalformedMessage` event (and logged once per
connection); the feed goes on. Subscribers that fall behind lose the oldest *statuses* first
(a newer status supersedes them), never scaling events or state changes.

Runs on the asyncio loop that calls :meth:`start` (in the app: the qasync GUI loop); all methods
must be called on that loop. Depends on ``websockets`` (the node pack never imports this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .status import (
    DaemonStatus,
    ScalingEvent,
    StaticFacts,
    StatusErrorReply,
    StatusMessageError,
    get_status_request,
    parse_status_message,
)

DEFAULT_WS_PORT = 19284


class FeedState(enum.Enum):
    """Where the feed's connection stands."""

    CONNECTING = "connecting"  # first attempt, nothing known yet
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # was connected, lost it, trying again
    OFFLINE = "offline"  # attempts fail: no daemon answers (the feed keeps trying)
    CLOSED = "closed"  # aclose() was called


@dataclass(frozen=True)
class FeedStateChanged:
    """The feed's connection state changed; ``error`` says why when it is not connected."""

    state: FeedState
    error: str | None
    at: float  # time.time()
    attempt: int = 0  # failed attempts since the last successful connect


@dataclass(frozen=True)
class MalformedMessage:
    """The daemon sent something that is not a valid status message; the feed went on."""

    error: StatusMessageError
    preview: str


FeedEvent = DaemonStatus | ScalingEvent | StatusErrorReply | FeedStateChanged | MalformedMessage


class FeedUnavailable(ConnectionError):
    """The feed has no connection to the daemon right now (or it was closed)."""


class _Subscriber:
    """One consumer's bounded queue; overflow drops the oldest status, never other events."""

    def __init__(self, max_pending: int) -> None:
        self.pending: deque[FeedEvent] = deque()
        self.max_pending = max_pending
        self.wake = asyncio.Event()
        self.dropped = 0

    def put(self, event: FeedEvent) -> None:
        self.pending.append(event)
        if len(self.pending) > self.max_pending:
            for index, queued in enumerate(self.pending):
                if isinstance(queued, DaemonStatus):
                    del self.pending[index]
                    self.dropped += 1
                    break
            else:  # nothing replaceable queued: drop the oldest event of any kind
                self.pending.popleft()
                self.dropped += 1
        self.wake.set()


class AsyncStatusFeed:
    """Typed, self-reconnecting stream of the daemon's status WebSocket (see module docstring).

    Use ``async with AsyncStatusFeed(host, port) as feed: async for event in feed: ...`` or
    :meth:`subscribe` for several independent consumers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_WS_PORT,
        *,
        token: str | None = None,
        open_timeout: float = 3.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        max_pending: int = 256,
        logger: logging.Logger | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.uri = f"ws://{host}:{port}/"
        self._token = token
        self._open_timeout = open_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_pending = max_pending
        self._log = logger or logging.getLogger("luna.daemon.feed")
        self._subscribers: set[_Subscriber] = set()
        self._task: asyncio.Task | None = None
        self._connection: ClientConnection | None = None
        self._full_status_waiters: list[asyncio.Future[DaemonStatus]] = []
        self.state = FeedState.CONNECTING
        self.last_error: str | None = None
        #: the newest status received (None before the first)
        self.latest: DaemonStatus | None = None
        #: the static facts (config, pid, ports …) of the current daemon, from its first status
        self.static: StaticFacts | None = None
        self.connects = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> AsyncStatusFeed:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"status-feed-{self.port}")
        return self

    async def aclose(self) -> None:
        """Stop for good: close the connection, end every subscriber's iteration."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiters(FeedUnavailable("the status feed was closed"))
        self._set_state(FeedState.CLOSED, None)

    async def __aenter__(self) -> AsyncStatusFeed:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ consuming

    def subscribe(self) -> AsyncIterator[FeedEvent]:
        """A new independent stream of events from now on (the current state comes first)."""
        subscriber = _Subscriber(self._max_pending)
        subscriber.put(FeedStateChanged(self.state, self.last_error, time.time()))
        self._subscribers.add(subscriber)
        return self._iterate(subscriber)

    def __aiter__(self) -> AsyncIterator[FeedEvent]:
        return self.subscribe()

    async def _iterate(self, subscriber: _Subscriber) -> AsyncIterator[FeedEvent]:
        try:
            while True:
                while subscriber.pending:
                    event = subscriber.pending.popleft()
                    yield event
                    if isinstance(event, FeedStateChanged) and event.state is FeedState.CLOSED:
                        return
                if self.state is FeedState.CLOSED:
                    return
                subscriber.wake.clear()
                await subscriber.wake.wait()
        finally:
            self._subscribers.discard(subscriber)

    async def get_status(self, timeout: float = 5.0) -> DaemonStatus:
        """Ask the daemon for an immediate full status (with its static facts) and wait for it."""
        connection = self._connection
        if connection is None or self.state is not FeedState.CONNECTED:
            raise FeedUnavailable(
                f"no connection to the daemon's status WebSocket {self.uri} ({self.last_error or self.state.value})"
            )
        waiter: asyncio.Future[DaemonStatus] = asyncio.get_running_loop().create_future()
        self._full_status_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await connection.send(get_status_request())
                return await waiter
        except ConnectionClosed as exc:
            raise FeedUnavailable(f"the status WebSocket closed: {exc}") from None
        except TimeoutError:
            raise FeedUnavailable(f"no status from {self.uri} within {timeout:g} s") from None
        finally:
            if waiter in self._full_status_waiters:
                self._full_status_waiters.remove(waiter)

    # ------------------------------------------------------------------ internals

    def _publish(self, event: FeedEvent) -> None:
        for subscriber in self._subscribers:
            subscriber.put(event)

    def _set_state(self, state: FeedState, error: str | None, attempt: int = 0) -> None:
        if state is self.state and error == self.last_error:
            return
        self.state = state
        self.last_error = error
        self._publish(FeedStateChanged(state, error, time.time(), attempt))

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._full_status_waiters = self._full_status_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    async def _run(self) -> None:
        failures = 0
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        while True:
            try:
                async with connect(
                    self.uri,
                    open_timeout=self._open_timeout,
                    additional_headers=headers,
                    max_size=2**22,
                    # the daemon pings us; answering is enough, and a paused loop must not be fatal
                    ping_interval=None,
                    logger=self._log,
                ) as connection:
                    failures = 0
                    self.connects += 1
                    self._connection = connection
                    self._set_state(FeedState.CONNECTED, None)
                    await self._receive(connection)
                    error = "the daemon closed the status WebSocket"
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                error = _describe(exc)
            finally:
                self._connection = None
            self._fail_waiters(FeedUnavailable(error))
            failures += 1
            was_connected = self.state is FeedState.CONNECTED
            self._set_state(FeedState.RECONNECTING if was_connected else FeedState.OFFLINE, error, failures)
            if was_connected:
                self._log.info("status feed %s lost: %s; reconnecting", self.uri, error)
            delay = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 16))
            await asyncio.sleep(0 if was_connected else delay)

    async def _receive(self, connection: ClientConnection) -> None:
        reported = False
        async for raw in connection:
            try:
                message = parse_status_message(raw)
            except StatusMessageError as exc:
                preview = (raw if isinstance(raw, str) else repr(raw[:80]))[:80]
                if not reported:
                    self._log.warning("malformed message on %s: %s", self.uri, exc)
                    reported = True
                self._publish(MalformedMessage(exc, preview))
                continue
            if isinstance(message, DaemonStatus):
                self.latest = message
                if message.static is not None:
                    self.static = message.static
                    waiters, self._full_status_waiters = self._full_status_waiters, []
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(message)
            self._publish(message)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the daemon running?)"
    if isinstance(exc, TimeoutError):
        return "timed out opening the WebSocket"
    text = str(exc) or type(exc).__name__
    return text
