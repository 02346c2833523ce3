"""Writer: the beat and the story context → the prose of the turn, streamed piece by piece.

``on_text`` is called with every piece as it arrives (the CLI prints it, the GUI appends it);
the finished text is returned — cut back to its last full sentence when the token limit stopped
it mid-sentence (the streamed pieces and the stored raw answer keep everything). An answer with no text is an
:class:`~app.narrates.llm.errors.LlmOutputError`. Runs on the pipeline's loop; cancelling the
task closes the stream (the client's contract), which stops the server generating.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from app.narrates.agents.base import chat_request
from app.narrates.context import StoryContext
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import DEFAULT_AGENTS, AgentSettings
from app.narrates.llm.errors import LlmOutputError
from app.narrates.model import Action, Beat, SessionSettings
from app.narrates.prompts import PromptTemplate

NAME = "writer"
DEFAULTS = DEFAULT_AGENTS[NAME]


@dataclass(frozen=True)
class Prose:
    """``text`` is what the reader keeps; ``raw`` what the model sent (differs when it was cut)."""

    text: str
    finish_reason: str | None
    pieces: int
    raw: str = ""


_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")


def trim_unfinished(text: str) -> str:
    """Text cut by the token limit ends at its last full sentence (when that keeps most of it)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) // 2:
        return text[: ends[-1]].rstrip()
    return text


async def run(
    llm: LlmClient,
    prompt: PromptTemplate,
    params: AgentSettings,
    *,
    action: Action,
    beat: Beat,
    context: StoryContext,
    settings: SessionSettings,
    on_text: Callable[[str], None],
) -> Prose:
    request = chat_request(
        prompt,
        {
            "direction": settings.direction,
            "cast": context.cast,
            "world": context.world,
            "summary": context.summary,
            "recent": context.recent,
            "action": action.action,
            "goal": beat.goal,
            "stakes": beat.stakes or "none",
            "location": beat.location or "unchanged",
            "present": ", ".join(beat.present) or "no one else",
            "changes": "; ".join(beat.world_changes) or "none",
        },
        params,
    )
    parts: list[str] = []
    finish: str | None = None
    async for chunk in llm.stream(request):
        if chunk.text:
            parts.append(chunk.text)
            on_text(chunk.text)
        if chunk.finish_reason:
            finish = chunk.finish_reason
    raw = "".join(parts)
    text = raw.strip()
    if not text:
        raise LlmOutputError("the model returned no prose (an empty answer)", raw=raw)
    if finish == "length":
        text = trim_unfinished(text)
    return Prose(text=text, finish_reason=finish, pieces=len(parts), raw=raw)
