"""The status WebSocket (default port 19284), built on the ``websockets`` library.

Owns the monitoring channel of the original Luna daemon, message for message (``daemon/PROTOCOL.md`` §13):

* ``{"type":"status","data":{…}}`` once on connect, then every ``interval`` seconds (1 s by
  default) to every connected client, and in reply to ``{"type":"get_status"}``; the first
  status and the replies carry the static facts (config, pid, ports …), the 1 Hz ones do not
  (message types: ``daemon/wire/status.py``);
* ``{"type":"scaling","data":{"event","pool","worker_id","active_workers","vram_available_gb"}}``
  whenever a pool scales;
* ``GET /healthz`` answers ``200 ok`` over plain HTTP (for supervisors and curl), and nothing else.

With a ``token`` (the daemon requires its token, as it does on any non-loopback bind) the
handshake must present it, as ``Authorization: Bearer <token>`` (what
:class:`~daemon.wire.status_feed.AsyncStatusFeed` sends) or ``?token=<token>``; anything else is
refused with HTTP 401 before any status is built (constant-time compare, ``daemon.auth``).

Clients that only listen stay connected for as long as they like (the old hand-written server
dropped them after about a second). Each client has its own bounded send queue drained by its
own task; a queued status message is replaced by a newer one, so a slow client gets fewer,
fresher updates and never stalls the daemon or the other clients. Connections whose
``Origin`` header is not configured are refused (browser pages cannot read the status unless
allowed); clients that send no Origin (Python, the app, ComfyUI) are accepted.

``get_status`` is rate-limited per client: at most one full status per
``get_status_interval`` (0.25 s); requests in between are coalesced into one reply at the end
of the interval, so a client sending them in a loop costs the loop a few status builds a second,
never one per message. Client messages are size- and depth-limited before they are parsed, and
a client sending more than ``MESSAGE_BURST`` at once or ``MESSAGE_RATE`` a second after that is
closed with 1008 (policy violation): parsing a flood would cost the loop the TCP port shares.
At most ``max_clients`` (64) clients are connected at once; more are refused with HTTP 503.

Runs entirely on the daemon's event loop; :meth:`StatusWebSocket.publish_scaling` must be
called on that loop (the pools do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from daemon.auth import tokens_match
from daemon.tcp_service import bind_with_retry, set_abortive_close
from daemon.wire.status import (
    GET_STATUS,
    SCALING,
    STATUS,
    DaemonStatus,
    ScalingEvent,
    StatusErrorReply,
    StatusMessageError,
    loads_bounded,
)

#: Queue kind of a status carrying the static facts (never dropped in favour of a tick).
FULL_STATUS = "status+static"
#: Largest client message accepted (a get_status is 21 bytes).
MAX_CLIENT_MESSAGE = 4096
#: Client messages allowed at once, and per second after that; more closes the connection (1008).
MESSAGE_BURST = 200
MESSAGE_RATE = 50.0


class _Client:
    """One connection's pending messages (kind, text) and the event that wakes its sender."""

    def __init__(self, connection: ServerConnection, max_pending: int):
        self.connection = connection
        self.pending: deque[tuple[str, str]] = deque()
        self.wake = asyncio.Event()
        self.max_pending = max_pending
        self.dropped = 0
        self.sender: asyncio.Task | None = None
        self.last_full_status = -math.inf  # loop time of the last get_status reply
        self.deferred_reply: asyncio.TimerHandle | None = None
        self._budget = float(MESSAGE_BURST)
        self._budget_at: float | None = None

    def take_message_budget(self, now: float) -> bool:
        """Token bucket: MESSAGE_BURST messages at once, MESSAGE_RATE per second after that."""
        if self._budget_at is not None:
            self._budget = min(MESSAGE_BURST, self._budget + (now - self._budget_at) * MESSAGE_RATE)
        self._budget_at = now
        if self._budget < 1.0:
            return False
        self._budget -= 1.0
        return True

    def enqueue(self, kind: str, text: str) -> None:
        if kind in (STATUS, FULL_STATUS):
            # Only the newest status matters: drop statuses still waiting that this one supersedes.
            # A full status (static facts: the first one, a get_status reply) supersedes both kinds;
            # a 1 Hz tick supersedes only ticks, so it never swallows a pending full status.
            superseded = (STATUS, FULL_STATUS) if kind == FULL_STATUS else (STATUS,)
            before = len(self.pending)
            self.pending = deque(item for item in self.pending if item[0] not in superseded)
            self.dropped += before - len(self.pending)
        self.pending.append((kind, text))
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped += 1
        self.wake.set()


class StatusWebSocket:
    """WebSocket server broadcasting the daemon status and scaling events."""

    def __init__(
        self,
        status_provider: Callable[..., DaemonStatus],
        *,
        host: str = "127.0.0.1",
        port: int = 19284,
        interval: float = 1.0,
        allowed_origins: Sequence[str] = (),
        max_pending: int = 32,
        get_status_interval: float = 0.25,
        token: str | None = None,
        max_clients: int = 64,
        logger: logging.Logger | None = None,
    ):
        self._status_provider = status_provider
        self._host = host
        self._port = port
        self._interval = interval
        # None in the list = "no Origin header" (non-browser clients).
        self._origins: list[str | None] = [None, *allowed_origins]
        self._max_pending = max_pending
        self._get_status_interval = get_status_interval
        # Set when the daemon requires its token (any non-loopback bind): the handshake must carry
        # it as "Authorization: Bearer <token>" or "?token=<token>", else 401.
        self._token = token or None
        self.refused_unauthorized = 0
        # Each connection costs a full status on connect and a send queue: bounded like the
        # protocol port's max_connections, refused with 503 before any of that is built.
        self._max_clients = max_clients
        self.refused_busy = 0
        self.closed_flooding = 0
        self.get_status_coalesced = 0
        self._log = logger or logging.getLogger("luna.daemon.ws")
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._ticker: asyncio.Task | None = None
        self.messages_sent = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        """Bind (port 0 → a free port) and start broadcasting; returns the bound (host, port)."""
        # Bound like the protocol port: exclusively on Windows, so no second daemon can share it.
        listener = await bind_with_retry(self._host, self._port)
        try:
            self._server = await serve(
                self._handle,
                sock=listener,
                origins=self._origins,
                process_request=self._process_request,
                max_size=MAX_CLIENT_MESSAGE,
                logger=self._log,
            )
        except BaseException:
            listener.close()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="status-ws-ticker")
        host, port = self._server.sockets[0].getsockname()[:2]
        self._log.info("status WebSocket listening on ws://%s:%d", host, port)
        return host, port

    async def close(self) -> None:
        """Close every connection (code 1001 going away) and stop listening."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            # The closing handshake still runs; the TCP teardown after it is then a reset, so no
            # connection of this port lingers to block the next daemon's exclusive bind (Windows).
            for client in self._clients:
                sock = client.connection.transport.get_extra_info("socket")
                if sock is not None:
                    set_abortive_close(sock)
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------------ publishing

    def status_message(self, *, full: bool) -> str:
        """A status message; ``full`` adds the static facts (config, pid, ports …)."""
        return self._status_provider(full=full).to_json()

    def publish_status(self) -> None:
        """Queue a fresh 1 Hz status (no static facts) for every client now."""
        if not self._clients:
            return
        text = self.status_message(full=False)
        for client in self._clients:
            client.enqueue(STATUS, text)

    def publish_scaling(self, event: ScalingEvent) -> None:
        """Queue a scaling event for every client (never blocks)."""
        text = event.to_json()
        for client in self._clients:
            client.enqueue(SCALING, text)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.publish_status()
            except Exception:  # a status bug must not end the broadcast
                self._log.exception("building the status failed")

    # ------------------------------------------------------------------ connections

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")  # says nothing but "alive"
        if self._token is not None and not self._authorized(request, query):
            self.refused_unauthorized += 1
            self._log.info("status client from %s refused: no valid token", connection.remote_address)
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED,
                "this daemon requires its token: send 'Authorization: Bearer <token>' or ?token=\n",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="luna-daemon"'
            return response
        if len(self._clients) >= self._max_clients:
            self.refused_busy += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many status clients\n")
        return None

    def _authorized(self, request: Request, query: str) -> bool:
        """The handshake carries the token as a Bearer header or a ``token`` query parameter."""
        presented: list[str] = []
        for value in request.headers.get_all("Authorization"):
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                presented.append(credentials.strip())
        try:
            presented += parse_qs(query, keep_blank_values=True, max_num_fields=16).get("token", [])
        except ValueError:  # more than 16 query fields: nobody's real handshake
            return False
        # Every candidate is compared (constant time each), so timing does not tell which matched.
        matches = [tokens_match(candidate, self._token) for candidate in presented[:8]]
        return any(matches)

    async def _handle(self, connection: ServerConnection) -> None:
        client = _Client(connection, self._max_pending)
        self._clients.add(client)
        client.sender = asyncio.create_task(self._send_loop(client), name="status-ws-sender")
        self._log.debug("status client connected from %s", connection.remote_address)
        try:
            client.last_full_status = asyncio.get_running_loop().time()
            client.enqueue(FULL_STATUS, self.status_message(full=True))
            async for raw in connection:
                if not client.take_message_budget(asyncio.get_running_loop().time()):
                    # Far more messages than any real client sends (the app sends one now and
                    # then): parsing them would cost the event loop the protocol port shares.
                    self.closed_flooding += 1
                    self._log.info("status client %s closed: message flood", connection.remote_address)
                    await self._close_flooder(connection)
                    break
                self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            if client.deferred_reply is not None:
                client.deferred_reply.cancel()
            client.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.sender
            self._log.debug(
                "status client %s left (%d stale messages dropped)", connection.remote_address, client.dropped
            )

    @staticmethod
    async def _close_flooder(connection: ServerConnection) -> None:
        """Close with 1008, reading (and discarding) what still arrives meanwhile: websockets
        stops reading the socket while unread messages queue up, so a plain ``await close()``
        would never see the client's close frame and hold the slot for the close timeout."""
        closing = asyncio.ensure_future(connection.close(CloseCode.POLICY_VIOLATION, "too many messages"))
        with contextlib.suppress(ConnectionClosed):
            async for _ in connection:
                pass
        await closing

    def _on_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            message = loads_bounded(raw)
        except StatusMessageError as exc:
            client.enqueue("error", StatusErrorReply(f'{exc}; send {{"type": "get_status"}}').to_json())
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == GET_STATUS:
            self._answer_get_status(client)
        else:
            reply = StatusErrorReply('unknown message; send {"type": "get_status"}')
            client.enqueue("error", reply.to_json())

    def _answer_get_status(self, client: _Client) -> None:
        """Answer now, or once at the end of the client's rate-limit interval (coalescing)."""
        if client.deferred_reply is not None:
            self.get_status_coalesced += 1
            return
        loop = asyncio.get_running_loop()
        wait = client.last_full_status + self._get_status_interval - loop.time()
        if wait <= 0:
            self._send_full_status(client)
        else:
            client.deferred_reply = loop.call_later(wait, self._send_full_status, client)

    def _send_full_status(self, client: _Client) -> None:
        client.deferred_reply = None
        if client not in self._clients:
            return
        client.last_full_status = asyncio.get_running_loop().time()
        try:
            client.enqueue(FULL_STATUS, self.status_message(full=True))
        except Exception:  # a status bug must not kill this client's connection
            self._log.exception("building the status failed")

    async def _send_loop(self, client: _Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await client.wake.wait()
                client.wake.clear()
                while client.pending:
                    _, text = client.pending.popleft()
                    await client.connection.send(text)
                    self.messages_sent += 1
