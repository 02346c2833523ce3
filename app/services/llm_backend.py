"""Which LLM the story panel talks to, and the embedded runtime's life: started only when needed.

:class:`LlmBackendManager` owns the operator's choice (:class:`BackendChoice`: ``auto`` — llm.toml,
then discovery, then the embedded model, the same precedence as ``luna story`` through
:func:`app.narrates.llm.config.resolve_backend`; ``embedded``; or a server ``url``, e.g. one that
discovery found), the resolved :class:`~app.narrates.llm.config.EffectiveBackend` shown to the
operator, and the one :class:`~app.narrates.llm.client.LlmClient` turns use. The embedded
llama.cpp server (:class:`~app.narrates.llm.embedded.EmbeddedLlm`, a supervised child that
cannot outlive the app) is started by :meth:`client` only when the effective backend is the
embedded one — never at app start — and stopped when the choice changes and on :meth:`aclose`.
Pure asyncio, no Qt; runs on the app's one loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from app.narrates.llm import (
    AGENTS,
    DiscoveredBackend,
    EffectiveBackend,
    EmbeddedLlm,
    LlmClient,
    LlmSettings,
    discover_backends,
    load_llm_settings,
    resolve_backend,
)
from app.supervision.child import ChildEvent, GaveUp

log = logging.getLogger(__name__)
MODES = ("auto", "embedded", "url")


@dataclass(frozen=True)
class BackendChoice:
    """``mode``: ``auto`` | ``embedded`` | ``url`` (``url`` then names the server's /v1 root)."""

    mode: str = "auto"
    url: str = ""
    model: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"backend mode must be one of {MODES}, not {self.mode!r}")
        if self.mode == "url" and not self.url.strip():
            raise ValueError("a server URL is needed (e.g. http://127.0.0.1:11434/v1)")

    def cli_llm(self) -> str | None:
        """The ``--llm`` equivalent for :func:`resolve_backend`."""
        return {"auto": None, "embedded": "embedded", "url": self.url.strip()}[self.mode]


@dataclass(frozen=True)
class BackendState:
    """What the picker shows: the effective backend (None until resolved), whether it is running."""

    choice: BackendChoice
    effective: EffectiveBackend | None
    running: bool
    error: str = ""
    discovered: tuple[DiscoveredBackend, ...] = ()  # what the last scan found (the picker lists them)

    def describe(self) -> str:
        if self.error:
            return f"LLM: {self.error}"
        if self.effective is None:
            return "LLM: not chosen yet"
        first, _, rest = self.effective.describe().partition("\n")
        if self.effective.kind == "embedded":
            first += " (running)" if self.running else " (starts with the first turn)"
        return f"{first}\n{rest}" if rest else first


Discover = Callable[..., Awaitable[list[DiscoveredBackend]]]


class LlmBackendManager:
    """See the module docstring. ``on_state(BackendState)`` hears every change."""

    def __init__(
        self,
        *,
        settings_loader: Callable[[], LlmSettings] = load_llm_settings,
        discover: Discover = discover_backends,
        embedded_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._load_settings = settings_loader
        self._discover = discover
        self._embedded_kwargs = dict(embedded_kwargs or {})
        self.choice = BackendChoice()
        self.effective: EffectiveBackend | None = None
        self.discovered: tuple[DiscoveredBackend, ...] = ()
        self.embedded: EmbeddedLlm | None = None
        self._client: LlmClient | None = None
        self._settings: LlmSettings | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[BackendState], None]] = []
        self._child_listeners: list[Callable[[ChildEvent], None]] = []
        self._error = ""
        self._stale = False

    def add_listener(self, listener: Callable[[BackendState], None]) -> Callable[[], None]:
        """Hear every state change; returns the call that removes the listener."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_child_listener(self, listener: Callable[[ChildEvent], None]) -> Callable[[], None]:
        """Hear the embedded server's supervision events (output lines, restarts, give-ups)."""
        self._child_listeners.append(listener)
        return lambda: self._child_listeners.remove(listener)

    def _on_child_event(self, event: ChildEvent) -> None:
        for listener in self._child_listeners:
            listener(event)
        if isinstance(event, GaveUp) and self._client is not None:
            # the child is gone for good: the next turn starts it again instead of talking to nobody
            self._stale = True
            self._error = f"the embedded model stopped: {event.reason} (the next turn starts it again)"
            self._notify()

    @property
    def state(self) -> BackendState:
        running = self._client is not None
        return BackendState(self.choice, self.effective, running, self._error, self.discovered)

    def _notify(self) -> None:
        state = self.state
        for listener in self._listeners:
            listener(state)

    def agent_params(self) -> dict[str, Any]:
        """Per-agent sampling settings from llm.toml (what :class:`TurnPipeline` takes as ``params``)."""
        settings = self._settings_now()
        return {name: settings.agent(name) for name in AGENTS}

    async def discover(self) -> tuple[DiscoveredBackend, ...]:
        """Scan for running servers (the picker lists them); does not change the choice."""
        settings = self._settings_now()
        self.discovered = tuple(await self._discover(settings.discovery.host, settings.discovery.timeout))
        return self.discovered

    def _settings_now(self) -> LlmSettings:
        if self._settings is None:
            self._settings = self._load_settings()
        return self._settings

    async def resolve(self) -> EffectiveBackend:
        """The backend the current choice means now (no server started); raises LlmConfigError."""
        async with self._lock:
            return await self._resolve()

    async def _resolve(self) -> EffectiveBackend:
        try:
            settings = self._settings_now()
            effective = await resolve_backend(
                settings, self.choice.cli_llm(), self.choice.model, discover=self._discover
            )
            if self.choice.mode != "auto":  # resolve_backend words it for --llm; say where it came from
                backend = effective.backend
                if backend is not None:
                    backend = replace(backend, name="server", origin="configured")
                effective = replace(effective, backend=backend, reason="chosen in the Story tab")
            self.effective = effective
            self._error = ""
        except Exception as exc:
            self._error = str(exc)
            self._notify()
            raise
        self.discovered = self.discovered or self.effective.discovered
        self._notify()
        return self.effective

    async def choose(self, choice: BackendChoice) -> EffectiveBackend:
        """Switch to ``choice``: the old client is closed (the embedded server stopped) first."""
        async with self._lock:
            await self._release()
            self.choice = choice
            self._settings = None  # pick up an edited llm.toml
            return await self._resolve()

    async def client(self) -> LlmClient:
        """The client turns use; starts the embedded runtime here if that is the effective backend."""
        async with self._lock:
            if self._stale:
                self._stale = False
                await self._release()
            if self._client is not None:
                return self._client
            effective = self.effective or await self._resolve()
            settings = self._settings_now()
            if effective.kind == "server":
                assert effective.backend is not None
                backend = effective.backend
            else:
                kwargs = {"on_event": self._on_child_event, **self._embedded_kwargs}
                self.embedded = effective.create_embedded(**kwargs)
                try:
                    backend = await self.embedded.start()
                except BaseException as exc:
                    embedded, self.embedded = self.embedded, None
                    await embedded.stop()
                    self._error = f"the embedded model did not start: {exc}"
                    self._notify()
                    raise
            self._client = LlmClient(backend, timeouts=settings.timeouts, retries=settings.retries)
            self._error = ""
            self._notify()
            return self._client

    async def _release(self) -> None:
        client, self._client = self._client, None
        embedded, self.embedded = self.embedded, None
        if client is not None:
            await client.aclose()
        if embedded is not None:
            await embedded.stop()

    async def aclose(self) -> None:
        """Close the client and stop the embedded server (if it was started)."""
        async with self._lock:
            await self._release()
        self._notify()
