"""Which LLM tells the story: ``<config dir>/llm.toml``, the CLI override, and the effective choice.

Owns :class:`LlmSettings` (validated ``llm.toml``; an unknown key or a bad value is an
:class:`~app.narrates.llm.errors.LlmConfigError` naming the file and the key; the documented
example is ``resources/llm.example.toml``), :class:`AgentSettings` (model / temperature /
max_tokens of the Preprocessor, Strategist, Writer and Dreamer), :func:`load_llm_settings`, and
:func:`resolve_backend`, which applies the precedence

1. the CLI: ``--llm URL`` (any OpenAI-compatible server) or ``--llm embedded``;
2. ``backend = "server"`` / a ``[server]`` url in ``llm.toml``; ``backend = "embedded"`` forces it;
3. a server found on loopback by :func:`~app.narrates.llm.discovery.discover_backends`;
4. the embedded runtime (:class:`~app.narrates.llm.embedded.EmbeddedLlm`)

and returns an :class:`EffectiveBackend` that says what was chosen and why. The config dir comes
from :func:`app.paths.user_dirs` (``LUNA_HOME`` moves it). Pure data + file reading, except
:func:`resolve_backend`, which may probe loopback ports on the caller's event loop.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from app.narrates.llm.discovery import DiscoveredBackend, discover_backends
from app.narrates.llm.embedded import STARTER_NOTE, EmbeddedLlm
from app.narrates.llm.errors import LlmConfigError
from app.narrates.llm.types import ChatMessage, ChatRequest, LlmBackend, LlmTimeouts, RetryPolicy
from app.paths import user_dirs

LLM_CONFIG_FILE = "llm.toml"
AGENTS = ("preprocessor", "strategist", "writer", "dreamer")
BackendMode = Literal["auto", "server", "embedded"]


@dataclass(frozen=True)
class AgentSettings:
    """One agent's sampling settings; ``model=None`` uses the backend's model."""

    model: str | None = None
    temperature: float = 0.8
    max_tokens: int = 512

    def request(
        self, messages: tuple[ChatMessage, ...], *, stop: tuple[str, ...] = (), seed: int | None = None
    ) -> ChatRequest:
        """A :class:`ChatRequest` carrying these settings."""
        return ChatRequest(
            messages=messages,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            stop=stop,
            seed=seed,
        )


#: Structured stages run cool and short (small models loop in long JSON); the Writer runs warmer.
DEFAULT_AGENTS: Mapping[str, AgentSettings] = MappingProxyType(
    {
        "preprocessor": AgentSettings(temperature=0.2, max_tokens=256),
        "strategist": AgentSettings(temperature=0.6, max_tokens=384),
        "writer": AgentSettings(temperature=0.8, max_tokens=400),
        "dreamer": AgentSettings(temperature=0.4, max_tokens=256),
    }
)


@dataclass(frozen=True)
class ServerSettings:
    """An OpenAI-compatible server the user runs (``url`` ends in ``/v1``)."""

    url: str
    model: str | None = None
    api_key: str | None = None
    name: str = "configured"


@dataclass(frozen=True)
class DiscoverySettings:
    """``[discovery]``: whether and where to look for running servers, and which to prefer."""

    enabled: bool = True
    host: str = "127.0.0.1"
    timeout: float = 0.5
    prefer: str | None = None  # e.g. "ollama": use that one when several answer


@dataclass(frozen=True)
class EmbeddedSettings:
    """``[embedded]``: the GGUF and llama.cpp settings of the embedded runtime."""

    model_path: Path | None = None  # None: the SmolLM2 starter model
    n_ctx: int = 4096
    n_threads: int | None = None  # None: max(1, cores - 1)
    ready_timeout_s: float = 120.0

    def create(self, **kwargs: Any) -> EmbeddedLlm:
        """An :class:`EmbeddedLlm` with these settings (``kwargs`` go to its constructor, e.g. ``on_event``)."""
        return EmbeddedLlm(
            self.model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            ready_timeout_s=self.ready_timeout_s,
            **kwargs,
        )


@dataclass(frozen=True)
class LlmSettings:
    """Everything ``llm.toml`` can say (defaults when the file is absent)."""

    backend: BackendMode = "auto"
    server: ServerSettings | None = None
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    timeouts: LlmTimeouts = field(default_factory=LlmTimeouts)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    agents: Mapping[str, AgentSettings] = field(default_factory=lambda: DEFAULT_AGENTS)
    source: Path | None = None

    def agent(self, name: str) -> AgentSettings:
        """Settings of agent ``name`` (one of :data:`AGENTS`)."""
        if name not in AGENTS:
            raise ValueError(f"unknown agent {name!r} (expected one of {', '.join(AGENTS)})")
        return self.agents.get(name, DEFAULT_AGENTS[name])


def llm_config_path() -> Path:
    """``<config dir>/llm.toml`` (under ``LUNA_HOME`` when it is set)."""
    return user_dirs().config / LLM_CONFIG_FILE


# --- parsing -------------------------------------------------------------------------------


class _Table:
    """Reads one TOML table, remembering which keys were used so the rest can be reported."""

    def __init__(self, data: Any, where: str, file: str) -> None:
        if not isinstance(data, dict):
            raise LlmConfigError(f"{file}: [{where}] must be a table")
        self.data, self.where, self.file = data, where, file
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise LlmConfigError(f"{self.file}: {self._key(key)} must be {_kind_name(kinds)}, not a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise LlmConfigError(f"{self.file}: {self._key(key)} must be {_kind_name(kinds)}, not {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float | None = None) -> float:
        value = self.get(key, float, default)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum:g}..{maximum:g}" if maximum is not None else f">= {minimum:g}"
            raise LlmConfigError(f"{self.file}: {self._key(key)} must be {bound}, not {value:g}")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            raise LlmConfigError(f"{self.file}: {self._key(key)} must be at least {minimum}, not {value}")
        return value

    def text(self, key: str) -> str | None:
        value = self.get(key, str, "")
        return value.strip() or None

    def table(self, key: str) -> _Table:
        self.used.add(key)
        return _Table(self.data.get(key, {}), self._key(key), self.file)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise LlmConfigError(f"{self.file}: unknown key {self._key(unknown[0])!r} (known here: {known})")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def normalize_base_url(url: str, where: str) -> tuple[str, bool]:
    """``url`` with ``/v1`` added when it has no path (``http://host:port`` → ``…/v1``), and whether it was added."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LlmConfigError(f"{where}: {url!r} is not an http(s)://host:port/v1 URL")
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/v1", "", "")), True
    return url.strip().rstrip("/"), False


def parse_llm_settings(
    text: str, *, file: str = LLM_CONFIG_FILE, base_dir: Path | None = None
) -> LlmSettings:
    """Parse and validate the text of an ``llm.toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LlmConfigError(f"{file}: not valid TOML: {exc}") from exc
    root = _Table(data, "", file)
    backend = root.get("backend", str, "auto")
    if backend not in ("auto", "server", "embedded"):
        raise LlmConfigError(f"{file}: backend must be auto, server or embedded, not {backend!r}")

    server = None
    if "server" in data:
        table = root.table("server")
        url = table.text("url")
        api_key = table.text("api_key")
        key_env = table.text("api_key_env")
        if key_env and not api_key:
            api_key = os.environ.get(key_env) or None
        name = table.text("name") or "configured"
        model = table.text("model")
        table.finish()
        if url:
            server = ServerSettings(normalize_base_url(url, f"{file}: server.url")[0], model, api_key, name)
        elif model or api_key:
            raise LlmConfigError(f'{file}: [server] needs url (e.g. url = "http://127.0.0.1:11434/v1")')
    if backend == "server" and server is None:
        raise LlmConfigError(f'{file}: backend = "server" needs a [server] table with url')

    table = root.table("discovery")
    discovery = DiscoverySettings(
        enabled=table.get("enabled", bool, True),
        host=table.text("host") or "127.0.0.1",
        timeout=table.number("timeout", 0.5, minimum=0.05, maximum=30.0),
        prefer=table.text("prefer"),
    )
    table.finish()

    table = root.table("embedded")
    model_path = table.text("model_path")
    path = Path(model_path).expanduser() if model_path else None
    if path is not None and not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    threads = table.integer("n_threads", 0, minimum=0)
    embedded = EmbeddedSettings(
        model_path=path,
        n_ctx=table.integer("n_ctx", 4096, minimum=256),
        n_threads=threads or None,
        ready_timeout_s=table.number("ready_timeout", 120.0, minimum=1.0),
    )
    table.finish()

    table = root.table("timeouts")
    defaults = LlmTimeouts()
    timeouts = LlmTimeouts(
        connect=table.number("connect", defaults.connect, minimum=0.1),
        read=table.number("read", defaults.read, minimum=0.1),
        write=table.number("write", defaults.write, minimum=0.1),
        total=table.number("total", defaults.total, minimum=1.0),
        probe=table.number("probe", defaults.probe, minimum=0.1),
    )
    table.finish()

    table = root.table("retries")
    retry_defaults = RetryPolicy()
    retries = RetryPolicy(
        attempts=table.integer("attempts", retry_defaults.attempts, minimum=1),
        backoff_initial_s=table.number("backoff_initial", retry_defaults.backoff_initial_s, minimum=0.0),
        backoff_max_s=table.number("backoff_max", retry_defaults.backoff_max_s, minimum=0.0),
        retry_after_max_s=table.number("retry_after_max", retry_defaults.retry_after_max_s, minimum=0.0),
    )
    table.finish()

    agents_table = root.table("agents")
    agents = dict(DEFAULT_AGENTS)
    for name in list(agents_table.data):
        if name not in AGENTS:
            raise LlmConfigError(
                f"{file}: unknown agent 'agents.{name}' (expected one of {', '.join(AGENTS)})"
            )
        table = agents_table.table(name)
        default = DEFAULT_AGENTS[name]
        agents[name] = AgentSettings(
            model=table.text("model"),
            temperature=table.number("temperature", default.temperature, minimum=0.0, maximum=2.0),
            max_tokens=table.integer("max_tokens", default.max_tokens, minimum=1),
        )
        table.finish()
    agents_table.finish()
    root.finish()
    return LlmSettings(
        backend=backend,
        server=server,
        discovery=discovery,
        embedded=embedded,
        timeouts=timeouts,
        retries=retries,
        agents=MappingProxyType(agents),
        source=Path(file) if base_dir is not None else None,
    )


def load_llm_settings(path: Path | None = None) -> LlmSettings:
    """Read ``path`` (default :func:`llm_config_path`); a missing file gives the defaults."""
    path = path or llm_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LlmSettings()
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmConfigError(f"{path}: cannot read it: {exc}") from exc
    return parse_llm_settings(text, file=str(path), base_dir=path.parent)


# --- the effective choice ------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveBackend:
    """The backend a run will use and why.

    ``kind == "server"``: ``backend`` is set. ``kind == "embedded"``: start
    :meth:`create_embedded` (its ``start()`` yields the backend); ``is_starter`` says the weak
    starter model will serve, which the UI must say plainly (:data:`STARTER_NOTE`).
    """

    kind: Literal["server", "embedded"]
    backend: LlmBackend | None
    reason: str
    discovered: tuple[DiscoveredBackend, ...] = ()
    embedded: EmbeddedSettings | None = None

    @property
    def is_starter(self) -> bool:
        return self.kind == "embedded" and (self.embedded is None or self.embedded.model_path is None)

    def create_embedded(self, **kwargs: Any) -> EmbeddedLlm:
        if self.kind != "embedded":
            raise ValueError("the effective backend is a server, not the embedded runtime")
        return (self.embedded or EmbeddedSettings()).create(**kwargs)

    def describe(self) -> str:
        """One or two lines for the CLI and the GUI: what, and why."""
        if self.kind == "server":
            assert self.backend is not None
            text = f"LLM: {self.backend.describe()} — {self.reason}"
        else:
            model = (self.embedded.model_path if self.embedded else None) or "SmolLM2-135M-Instruct (starter)"
            text = f"LLM: embedded llama.cpp serving {model} — {self.reason}"
            if self.is_starter:
                text += f"\nNote: {STARTER_NOTE}"
        others = [d for d in self.discovered if self.backend is None or d.base_url != self.backend.base_url]
        if others:
            text += "\nAlso found: " + ", ".join(f"{d.name} at {d.base_url}" for d in others)
        return text


Discover = Callable[..., Awaitable[list[DiscoveredBackend]]]


async def resolve_backend(
    settings: LlmSettings,
    cli_llm: str | None,
    cli_model: str | None,
    *,
    discover: Discover = discover_backends,
) -> EffectiveBackend:
    """Choose the backend (precedence in the module docstring); ``cli_model`` overrides the model."""
    if cli_llm:
        if cli_llm.strip().lower() == "embedded":
            return EffectiveBackend("embedded", None, "--llm embedded was given", embedded=settings.embedded)
        url, added = normalize_base_url(cli_llm, "--llm")
        api_key = settings.server.api_key if settings.server and settings.server.url == url else None
        backend = LlmBackend("cli", url, cli_model, api_key, origin="cli")
        reason = "--llm was given" + (" (/v1 added to the URL)" if added else "")
        return EffectiveBackend("server", backend, reason)
    if settings.backend == "embedded":
        return EffectiveBackend(
            "embedded", None, 'llm.toml says backend = "embedded"', embedded=settings.embedded
        )
    if settings.server is not None:
        server = settings.server
        backend = LlmBackend(
            server.name, server.url, cli_model or server.model, server.api_key, origin="configured"
        )
        return EffectiveBackend("server", backend, f"configured in {settings.source or LLM_CONFIG_FILE}")
    if settings.discovery.enabled:
        found = tuple(await discover(settings.discovery.host, settings.discovery.timeout))
        if found:
            chosen = found[0]
            if settings.discovery.prefer:
                chosen = next((d for d in found if d.name == settings.discovery.prefer), chosen)
            reason = f"no server configured; found {chosen.name} on {settings.discovery.host}:{chosen.port}"
            return EffectiveBackend("server", chosen.backend(cli_model), reason, discovered=found)
        reason = (
            f"no server configured and none answered on {settings.discovery.host} (tried the usual ports)"
        )
    else:
        reason = "no server configured and discovery is off"
    return EffectiveBackend("embedded", None, reason, embedded=settings.embedded)


@contextlib.asynccontextmanager
async def open_backend(effective: EffectiveBackend, **embedded_kwargs: Any) -> AsyncIterator[LlmBackend]:
    """``async with open_backend(effective) as backend:`` — the server's backend as is, or the embedded
    runtime started for the block and stopped after it (``embedded_kwargs`` go to :class:`EmbeddedLlm`)."""
    if effective.kind == "server":
        assert effective.backend is not None
        yield effective.backend
        return
    embedded = effective.create_embedded(**embedded_kwargs)
    try:
        yield await embedded.start()
    finally:
        await embedded.stop()
