"""Where the nodes find the daemon client, which daemon they talk to, and the daemon/local policy.

Owns three things the node classes share:

* the import of the daemon client. Installed into ComfyUI, the pack carries a vendored copy of
  the wire package ``daemon/wire/`` in its ``_vendor`` sub-package (written by ``install.py``); run from this repository there is no ``_vendor`` and the real ``daemon.wire.client``
  is used. Nothing else from this project is imported, so the installed pack needs only the
  standard library, numpy and torch (which ComfyUI already has).
* :class:`DaemonEndpoint` resolution: a node's ``host``/``port`` inputs, else the
  ``LUNA_DAEMON_HOST`` / ``LUNA_DAEMON_PORT`` / ``LUNA_DAEMON_TOKEN`` environment, else
  127.0.0.1:19283.
* :class:`DaemonConnections` (one blocking client per endpoint) and :func:`run_with_fallback`
  (``mode="daemon"`` fails loudly naming host:port; ``mode="auto"`` falls back to the local
  CLIP/VAE input and logs why). A daemon found unreachable is remembered as down for
  ``DOWN_FOR_SECONDS`` per host:port, so ``auto`` nodes in that window go local at once instead of
  each paying a refused connect (about 2 s on Windows, which retries the SYN).

Everything here runs on ComfyUI's prompt-worker thread; the shared clients are thread-safe.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

try:  # installed pack: the vendored copy written by install.py
    from ._vendor import client as daemon_client
except ModuleNotFoundError as _vendor_missing:
    if _vendor_missing.name != f"{__package__}._vendor":
        raise
    try:  # running from the repository: the real module
        from daemon.wire import client as daemon_client
    except ModuleNotFoundError as exc:
        raise ImportError(
            "Luna shared daemon nodes: the vendored daemon client (_vendor/) is missing from "
            f"{os.path.dirname(__file__)}. Reinstall the pack with "
            "`luna-daemon install-comfyui-nodes --comfyui PATH`."
        ) from exc

DaemonClient = daemon_client.DaemonClient
DaemonUnavailable = daemon_client.DaemonUnavailable
DaemonError = daemon_client.DaemonError
#: What a lost or refused connection can surface as (a failed hello may raise the raw error).
CONNECTION_FAILURES = (DaemonUnavailable, OSError, daemon_client.ProtocolError)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19283
MODES = ("auto", "daemon")
#: How long an unreachable daemon is skipped by ``auto`` nodes before it is tried again.
DOWN_FOR_SECONDS = 8.0

logger = logging.getLogger("luna_shared_daemon")

T = TypeVar("T")


class LunaDaemonNodeError(RuntimeError):
    """A Luna node could not produce its output; the message says why and what to do."""


@dataclass(frozen=True)
class DaemonEndpoint:
    """The daemon a node talks to (token only when one is configured)."""

    host: str
    port: int
    token: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def resolve_endpoint(
    host: str = "", port: int = 0, environ: Mapping[str, str] | None = None
) -> DaemonEndpoint:
    """Node inputs win; empty host / port 0 mean "environment, else 127.0.0.1:19283"."""
    env = os.environ if environ is None else environ
    chosen_host = (host or "").strip() or env.get("LUNA_DAEMON_HOST", "").strip() or DEFAULT_HOST
    if chosen_host.lower() == "localhost":
        # What the daemon binds for "localhost"; dialling the name would try ::1 first on Windows.
        chosen_host = DEFAULT_HOST
    chosen_port = int(port or 0)
    if chosen_port == 0:
        raw = env.get("LUNA_DAEMON_PORT", "").strip()
        if raw:
            try:
                chosen_port = int(raw)
            except ValueError:
                raise LunaDaemonNodeError(
                    f"LUNA_DAEMON_PORT={raw!r} is not a port number (expected 1-65535)"
                ) from None
        else:
            chosen_port = DEFAULT_PORT
    if not 1 <= chosen_port <= 65535:
        raise LunaDaemonNodeError(f"daemon port {chosen_port} is out of range (expected 1-65535)")
    token = env.get("LUNA_DAEMON_TOKEN", "").strip() or None
    return DaemonEndpoint(chosen_host, chosen_port, token)


class DaemonConnections:
    """One shared blocking :class:`DaemonClient` per endpoint for every node of the pack.

    ComfyUI runs nodes on one worker thread (sometimes more); the lock only guards the dict,
    the clients themselves are thread-safe. A client whose daemon went away is dropped so the
    next call starts clean (new connection, new shared-memory negotiation).
    """

    def __init__(
        self,
        factory: Callable[..., DaemonClient] | None = None,
        *,
        down_for: float = DOWN_FOR_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory or DaemonClient
        self._clients: dict[DaemonEndpoint, DaemonClient] = {}
        self._lock = threading.Lock()
        self._down_for = down_for
        self._clock = clock
        self._down_until: dict[tuple[str, int], float] = {}

    def mark_down(self, endpoint: DaemonEndpoint) -> None:
        """The daemon at ``endpoint`` could not be reached just now."""
        with self._lock:
            self._down_until[(endpoint.host, endpoint.port)] = self._clock() + self._down_for

    def mark_up(self, endpoint: DaemonEndpoint) -> None:
        with self._lock:
            self._down_until.pop((endpoint.host, endpoint.port), None)

    def recently_down(self, endpoint: DaemonEndpoint) -> bool:
        """True while ``endpoint`` was found unreachable less than ``down_for`` seconds ago."""
        key = (endpoint.host, endpoint.port)
        with self._lock:
            until = self._down_until.get(key)
            if until is None:
                return False
            if self._clock() >= until:
                del self._down_until[key]
                return False
            return True

    def client_for(self, endpoint: DaemonEndpoint) -> DaemonClient:
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = self._factory(
                    endpoint.host,
                    endpoint.port,
                    token=endpoint.token,
                    client_name=f"luna-comfyui-nodes/{os.getpid()}",
                )
                self._clients[endpoint] = client
            return client

    def __len__(self) -> int:
        """How many daemon endpoints currently have a client."""
        with self._lock:
            return len(self._clients)

    def discard(self, endpoint: DaemonEndpoint) -> None:
        with self._lock:
            client = self._clients.pop(endpoint, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection must never mask the real error
                logger.debug("closing the client for %s failed", endpoint.address, exc_info=True)

    def close_all(self) -> None:
        with self._lock:
            endpoints = list(self._clients)
        for endpoint in endpoints:
            self.discard(endpoint)


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, DaemonError):
        code = getattr(exc.code, "value", exc.code)
        return f"answered {code}: {exc.message}"
    return f"is unreachable ({exc})"


def run_with_fallback(
    *,
    connections: DaemonConnections,
    endpoint: DaemonEndpoint,
    mode: str,
    node_name: str,
    daemon_call: Callable[[DaemonClient], T],
    local_call: Callable[[], T] | None,
    local_input: str,
) -> T:
    """Run ``daemon_call``; on daemon failure obey ``mode`` (see the module docstring).

    ``local_call`` is None when the node's optional local CLIP/VAE input is not connected.
    Errors raised by the local path itself propagate unchanged (they are ComfyUI's own).
    """
    if mode not in MODES:
        raise LunaDaemonNodeError(f"{node_name}: mode must be one of {MODES}, got {mode!r}")
    if mode == "auto" and local_call is not None and connections.recently_down(endpoint):
        logger.debug(
            "%s: the Luna daemon at %s was unreachable moments ago; local", node_name, endpoint.address
        )
        return local_call()
    try:
        result = daemon_call(connections.client_for(endpoint))
    except (DaemonError, *CONNECTION_FAILURES) as exc:
        if not isinstance(exc, DaemonError):
            connections.discard(endpoint)
            connections.mark_down(endpoint)
        failure = f"the Luna daemon at {endpoint.address} {_describe_failure(exc)}"
        if mode == "daemon":
            raise LunaDaemonNodeError(
                f"{node_name}: {failure}. Start the daemon (`luna-daemon`), check its host/port, "
                f"or set mode to 'auto' and connect a local {local_input} input."
            ) from exc
        if local_call is None:
            raise LunaDaemonNodeError(
                f"{node_name}: {failure}, and mode 'auto' has no local {local_input} input to "
                f"fall back to. Connect a {local_input} (e.g. from Load Checkpoint) or start the "
                "daemon."
            ) from exc
        logger.warning("%s: %s; falling back to the local %s input", node_name, failure, local_input)
        return local_call()
    connections.mark_up(endpoint)
    return result
