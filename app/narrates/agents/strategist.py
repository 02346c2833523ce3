"""Strategist: the normalized action and the story context → the next :class:`~app.narrates.model.Beat`.

Asks for JSON (goal, stakes, who is present, where, world changes, whether the beat deserves an
image); names of present characters are matched to the cast (an unknown name is kept as the
model wrote it: the beat may introduce someone). Runs on the pipeline's loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.narrates.agents.base import chat_request
from app.narrates.context import StoryContext
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import DEFAULT_AGENTS, AgentSettings
from app.narrates.model import Action, Beat, Character, SessionSettings
from app.narrates.prompts import PromptTemplate

NAME = "strategist"
DEFAULTS = DEFAULT_AGENTS[NAME]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["goal", "stakes", "present", "location", "world_changes", "image_worthy"],
    "properties": {
        "goal": {"type": "string", "minLength": 1, "maxLength": 200},
        "stakes": {"type": "string", "maxLength": 160},
        "present": {
            "type": "array",
            "maxItems": 6,
            "items": {"type": "string", "minLength": 1, "maxLength": 60},
        },
        "location": {"type": "string", "maxLength": 120},
        "world_changes": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 160}},
        "image_worthy": {"type": "boolean"},
    },
}


def canonical_names(names: Sequence[str], characters: Sequence[Character]) -> tuple[str, ...]:
    lookup = {alias.casefold(): c.name for c in characters for alias in c.names()}
    out: list[str] = []
    for name in names:
        clean = " ".join(name.split())
        resolved = lookup.get(clean.casefold(), clean)
        if resolved and resolved not in out:
            out.append(resolved)
    return tuple(out)


async def run(
    llm: LlmClient,
    prompt: PromptTemplate,
    params: AgentSettings,
    *,
    action: Action,
    context: StoryContext,
    settings: SessionSettings,
    characters: Sequence[Character],
) -> Beat:
    request = chat_request(
        prompt,
        {
            "premise": settings.premise or "(none)",
            "direction": settings.direction or "(none)",
            "cast": context.cast,
            "world": context.world,
            "summary": context.summary,
            "recent": context.recent,
            "mode": action.mode,
            "action": action.action,
            "intent": action.intent or "(unclear)",
        },
        params,
    )
    answer = await llm.complete_json(request, SCHEMA, schema_name="strategist_beat")
    return Beat(
        goal=" ".join(answer["goal"].split()),
        stakes=" ".join(answer["stakes"].split()),
        present=canonical_names(answer["present"], characters),
        location=" ".join(answer["location"].split()),
        world_changes=tuple(" ".join(c.split()) for c in answer["world_changes"] if c.strip()),
        image_worthy=answer["image_worthy"],
    )
