"""What every agent shares: building the chat request from its prompt and its settings.

Per-agent sampling settings are :class:`~app.narrates.llm.config.AgentSettings` (``llm.toml``
``[agents.NAME]``); each agent module names its defaults. Pure functions; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.narrates.llm.config import AgentSettings
from app.narrates.llm.types import ChatMessage, ChatRequest
from app.narrates.prompts import PromptTemplate


def chat_request(
    prompt: PromptTemplate, values: Mapping[str, object], settings: AgentSettings
) -> ChatRequest:
    system, user = prompt.render(values)
    return settings.request((ChatMessage("system", system), ChatMessage("user", user)))


def clip(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters, keeping the end (the latest events)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "…" + flat[-(limit - 1) :]
