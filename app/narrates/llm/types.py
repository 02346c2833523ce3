"""Typed messages of the LLM layer: which server, what is asked, what comes back.

Owns the frozen dataclasses every caller of :class:`~app.narrates.llm.client.LlmClient` speaks:
:class:`LlmBackend` (one OpenAI-compatible server and the model to use on it), :class:`ChatMessage`,
:class:`ChatRequest` (per-agent settings travel in it), :class:`ChatChunk` (one streamed piece),
:class:`ChatReply` (a finished answer with its timing), and the client's knobs
:class:`LlmTimeouts` and :class:`RetryPolicy`. Pure data, any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

BackendOrigin = Literal["configured", "discovered", "embedded", "cli"]
Role = Literal["system", "user", "assistant"]

_ORIGINS = ("configured", "discovered", "embedded", "cli")
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class LlmBackend:
    """One OpenAI-compatible server: ``base_url`` ends in the API root (``http://host:port/v1``).

    ``model`` is the model id sent in requests (``None``: the server's first listed model);
    ``origin`` says where the choice came from, for the "effective backend" report.
    """

    name: str
    base_url: str
    model: str | None = None
    api_key: str | None = None
    origin: BackendOrigin = "configured"

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"LLM backend {self.name!r}: base_url {self.base_url!r} must be http(s)://host:port/v1"
            )
        if self.origin not in _ORIGINS:
            raise ValueError(
                f"LLM backend {self.name!r}: origin must be one of {_ORIGINS}, not {self.origin!r}"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @property
    def root_url(self) -> str:
        """The server root (``base_url`` without a trailing ``/v1``): llama.cpp's ``/tokenize`` lives there."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    @property
    def is_loopback(self) -> bool:
        """True for localhost/127.x/::1: such URLs never go through an environment proxy."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return host in ("localhost", "::1") or host.startswith("127.")

    def describe(self) -> str:
        """A one-line, secret-free description for logs and the effective-backend report."""
        model = self.model or "the server's default model"
        return f"{self.name} at {self.base_url} ({model}; {self.origin})"


@dataclass(frozen=True)
class ChatMessage:
    """One chat message; ``role`` is ``system``, ``user`` or ``assistant``."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"chat message role must be one of {_ROLES}, not {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"chat message content must be a str, not {type(self.content).__name__}")


@dataclass(frozen=True)
class ChatRequest:
    """What one agent asks: its messages and its own sampling settings.

    ``model=None`` uses the backend's model. ``max_tokens`` always bounds the answer (small models
    otherwise run on); ``stop`` strings end it early. ``seed`` and ``top_p`` are sent only when set.
    """

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    temperature: float = 0.8
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not self.messages:
            raise ValueError("a chat request needs at least one message")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be within 0..2, not {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {self.max_tokens}")


@dataclass(frozen=True)
class ChatChunk:
    """One streamed piece of an answer; the last one carries ``finish_reason`` (``stop``, ``length``…)."""

    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatReply:
    """A finished answer. Token counts are the server's (``None`` when it did not report them)."""

    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    elapsed_s: float


@dataclass(frozen=True)
class LlmTimeouts:
    """Every time limit of the client, in seconds.

    ``read`` bounds each wait for bytes (for a stream: the gap between two chunks, which covers the
    time to the first token); ``total`` bounds a whole call including retries, so a server that
    trickles forever still ends.
    """

    connect: float = 5.0
    read: float = 120.0
    write: float = 30.0
    total: float = 600.0
    probe: float = 2.0  # /models, /tokenize and other small calls


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries on 429, 5xx and dropped connections (never after text was streamed).

    ``attempts`` counts every try (1 = no retry). A 429's ``Retry-After`` is honoured up to
    ``retry_after_max_s``; otherwise the delay doubles from ``backoff_initial_s`` to ``backoff_max_s``.
    """

    attempts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry attempts must be at least 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_max_s))
        return min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
