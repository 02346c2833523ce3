"""Preprocessor: the player's raw input → a normalized :class:`~app.narrates.model.Action`.

Asks for JSON (mode, action in the second person, intent, entities, wants_image) and resolves the
entities against the session's cast and world notes itself — ``known``/``canonical`` never come
from the model. Runs on the pipeline's loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.narrates.agents.base import chat_request, clip
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import DEFAULT_AGENTS, AgentSettings
from app.narrates.model import ENTITY_TYPES, MODES, Action, Character, Entity, WorldNote
from app.narrates.prompts import PromptTemplate

NAME = "preprocessor"
DEFAULTS = DEFAULT_AGENTS[NAME]
MAX_ENTITIES = 6

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mode", "action", "intent", "entities", "wants_image"],
    "properties": {
        "mode": {"type": "string", "enum": list(MODES)},
        "action": {"type": "string", "minLength": 1, "maxLength": 240},
        "intent": {"type": "string", "maxLength": 120},
        "entities": {
            "type": "array",
            "maxItems": MAX_ENTITIES,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 60},
                    "type": {"type": "string", "enum": list(ENTITY_TYPES)},
                },
            },
        },
        "wants_image": {"type": "boolean"},
    },
}


def resolve_entities(
    raw: Sequence[dict[str, Any]], characters: Sequence[Character], world: Sequence[WorldNote]
) -> tuple[Entity, ...]:
    """Mark each entity known (with its canonical name) when it names a character or a world note."""
    by_name: dict[str, tuple[str, str]] = {}
    for note in world:
        for key in (note.title, *note.keys):
            by_name.setdefault(key.casefold(), (note.title, "place"))
    for character in characters:
        for name in character.names():
            by_name[name.casefold()] = (character.name, "character")
    out, seen = [], set()
    for item in raw:
        name = " ".join(str(item["name"]).split())
        key = name.casefold()
        if not name or key in seen:
            continue
        seen.add(key)
        match = by_name.get(key) or by_name.get(key.removeprefix("the ").strip())
        if match:
            kind = "character" if match[1] == "character" else item["type"]
            out.append(Entity(name=name, type=kind, known=True, canonical=match[0]))
        else:
            out.append(Entity(name=name, type=item["type"], known=False))
    return tuple(out)


def plausible_action(action: str, player_input: str) -> str:
    """The model's action, or the player's own words when it is not a plausible rewrite of them
    (a small model may answer a file name or a word salad): a sentence sharing a word with the input."""
    text = " ".join(action.split())
    words = {w.casefold().strip(".,!?;:'\"") for w in player_input.split() if len(w) > 3}
    shared = any(w.casefold().strip(".,!?;:'\"") in words for w in text.split())
    if len(text.split()) < 2 or (words and not shared):
        return player_input
    return text


async def run(
    llm: LlmClient,
    prompt: PromptTemplate,
    params: AgentSettings,
    *,
    player_input: str,
    characters: Sequence[Character],
    world: Sequence[WorldNote],
    last_prose: str,
) -> Action:
    request = chat_request(
        prompt,
        {
            "input": player_input,
            "cast_names": ", ".join(c.name for c in characters) or "(none)",
            "world_titles": ", ".join(n.title for n in world) or "(none)",
            "last_prose": clip(last_prose, 600) or "(the story begins)",
        },
        params,
    )
    answer = await llm.complete_json(request, SCHEMA, schema_name="preprocessor_action")
    action = plausible_action(answer["action"], player_input)
    return Action(
        mode=answer["mode"],
        action=action,
        intent=" ".join(answer["intent"].split()),
        entities=resolve_entities(answer["entities"], characters, world),
        wants_image=answer["wants_image"],
    )
