"""Summarizer: folds turns that left the context window into the session's rolling summary.

Plain text (no JSON), capped in length; the operator can read and correct the result (the
store keeps whether it was edited by hand). Runs on the pipeline's loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.narrates.agents.base import chat_request, clip
from app.narrates.context import turn_text
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import AgentSettings
from app.narrates.llm.errors import LlmOutputError
from app.narrates.prompts import PromptTemplate
from app.narrates.store import TurnRecord

NAME = "summary"
DEFAULTS = AgentSettings(temperature=0.3, max_tokens=220)
MAX_SUMMARY_CHARS = 1500


async def run(
    llm: LlmClient,
    prompt: PromptTemplate,
    params: AgentSettings,
    *,
    summary: str,
    turns: Sequence[TurnRecord],
) -> str:
    events = "\n\n".join(clip(turn_text(t), 1200) for t in turns)
    request = chat_request(prompt, {"summary": summary or "(empty)", "events": events}, params)
    reply = await llm.complete(request)
    text = " ".join(reply.text.split())
    if not text:
        raise LlmOutputError("the model returned an empty summary", raw=reply.text)
    return text[:MAX_SUMMARY_CHARS]
