"""Sans-I/O parsing of OpenAI-style Server-Sent Events: text lines in, chat chunks out.

Owns :class:`SseParser` (the SSE framing of the WHATWG spec: ``data:`` lines joined until a
blank line, comments and other fields ignored) and :func:`parse_chat_event`, which turns one
event's data into a :class:`~app.narrates.llm.types.ChatChunk`, the end marker ``[DONE]``, or a
typed error for an in-band ``{"error": …}`` (llama.cpp and vLLM report failures mid-stream that
way). No I/O; the client feeds it ``httpx`` lines. Any thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.narrates.llm.errors import LlmHttpError, LlmOutputError
from app.narrates.llm.types import ChatChunk

DONE = "[DONE]"


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its ``data`` (lines joined with ``\\n``) and its ``event`` name."""

    data: str
    event: str = "message"


class SseParser:
    """Feed lines (without their line ending); :meth:`feed` returns the events they complete."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = "message"

    def feed(self, line: str) -> list[SseEvent]:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return []  # comment / keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value or "message"
        return []

    def flush(self) -> list[SseEvent]:
        """Events left at end of stream (a server that omits the final blank line)."""
        return self._dispatch()

    def _dispatch(self) -> list[SseEvent]:
        if not self._data:
            self._event = "message"
            return []
        event = SseEvent("\n".join(self._data), self._event)
        self._data = []
        self._event = "message"
        return [event]


def parse_chat_event(data: str) -> ChatChunk | str | None:
    """``DONE`` for the end marker, a chunk for content/finish, ``None`` for role-only or usage-only events.

    Raises :class:`LlmHttpError` for an in-band error object and :class:`LlmOutputError` for data
    that is not a chat-completion chunk.
    """
    if data.strip() == DONE:
        return DONE
    try:
        payload: Any = json.loads(data)
    except ValueError as exc:
        raise LlmOutputError(
            f"the server streamed a frame that is not JSON: {data[:200]!r}", raw=data
        ) from exc
    if not isinstance(payload, dict):
        raise LlmOutputError(f"the server streamed {type(payload).__name__}, not a chunk object", raw=data)
    if "error" in payload:
        error = payload["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        status = error.get("code") if isinstance(error, dict) else None
        raise LlmHttpError(
            f"the server reported an error mid-stream: {message}",
            status=status if isinstance(status, int) else 500,
            body=data,
        )
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise LlmOutputError("the server streamed a chunk without 'choices'", raw=data)
    if not choices:
        return None  # e.g. the usage-only chunk of stream_options.include_usage
    choice = choices[0]
    if not isinstance(choice, dict):
        raise LlmOutputError("the server streamed a chunk whose choice is not an object", raw=data)
    delta = choice.get("delta") or {}
    text = delta.get("content") if isinstance(delta, dict) else None
    if text is None:
        text = choice.get("text")  # some servers stream completion-style choices
    finish = choice.get("finish_reason")
    if not isinstance(text, str):
        text = ""
    if not text and finish is None:
        return None
    return ChatChunk(text=text, finish_reason=finish if isinstance(finish, str) else None)
