"""LLM backends of the Narrates engine: one OpenAI-compatible client, discovery, the embedded runtime, llm.toml.

Pure asyncio over httpx, no Qt, no torch. Import from here; the submodules are:
:mod:`~app.narrates.llm.types` (messages), :mod:`~app.narrates.llm.errors` (typed failures),
:mod:`~app.narrates.llm.client` (:class:`LlmClient`), :mod:`~app.narrates.llm.structured` (JSON
dialects, repair, validation), :mod:`~app.narrates.llm.sse` (Sans-I/O SSE),
:mod:`~app.narrates.llm.discovery`, :mod:`~app.narrates.llm.embedded`,
:mod:`~app.narrates.llm.config`.
"""

from app.narrates.llm.client import LlmClient, estimate_tokens
from app.narrates.llm.config import (
    AGENTS,
    DEFAULT_AGENTS,
    AgentSettings,
    DiscoverySettings,
    EffectiveBackend,
    EmbeddedSettings,
    LlmSettings,
    ServerSettings,
    llm_config_path,
    load_llm_settings,
    open_backend,
    parse_llm_settings,
    resolve_backend,
)
from app.narrates.llm.discovery import KNOWN_SERVERS, DiscoveredBackend, discover_backends
from app.narrates.llm.embedded import STARTER_NOTE, EmbeddedLlm, check_runtime, default_gguf
from app.narrates.llm.errors import (
    EmbeddedModelMissing,
    EmbeddedRuntimeMissing,
    EmbeddedServerFailed,
    LlmCancelled,
    LlmConfigError,
    LlmError,
    LlmHttpError,
    LlmOutputError,
    LlmTimeout,
    LlmUnavailable,
)
from app.narrates.llm.structured import JsonDialect
from app.narrates.llm.types import (
    ChatChunk,
    ChatMessage,
    ChatReply,
    ChatRequest,
    LlmBackend,
    LlmTimeouts,
    RetryPolicy,
)

__all__ = [
    "AGENTS",
    "DEFAULT_AGENTS",
    "KNOWN_SERVERS",
    "STARTER_NOTE",
    "AgentSettings",
    "ChatChunk",
    "ChatMessage",
    "ChatReply",
    "ChatRequest",
    "DiscoveredBackend",
    "DiscoverySettings",
    "EffectiveBackend",
    "EmbeddedLlm",
    "EmbeddedModelMissing",
    "EmbeddedRuntimeMissing",
    "EmbeddedServerFailed",
    "EmbeddedSettings",
    "JsonDialect",
    "LlmBackend",
    "LlmCancelled",
    "LlmClient",
    "LlmConfigError",
    "LlmError",
    "LlmHttpError",
    "LlmOutputError",
    "LlmSettings",
    "LlmTimeout",
    "LlmTimeouts",
    "LlmUnavailable",
    "RetryPolicy",
    "ServerSettings",
    "check_runtime",
    "default_gguf",
    "discover_backends",
    "estimate_tokens",
    "llm_config_path",
    "load_llm_settings",
    "open_backend",
    "parse_llm_settings",
    "resolve_backend",
]
