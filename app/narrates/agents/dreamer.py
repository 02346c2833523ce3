"""Dreamer: the turn's finished prose → a :class:`~app.narrates.model.ScenePlan` for the renderer.

Two rules users of other story systems (SillyTavern, KoboldCpp, AI Dungeon) ask for:

* **only what has happened** — the model sees the prose already written, never the
  Strategist's plan; and a character is depicted only when the prose names them;
* **only how characters look** — the positive prompt is built here, not by the model, from the
  session's and the style's prefixes, each depicted character's fixed ``visual`` descriptors
  and the model's scene tags. A character's description (personality, history) never reaches
  the model or the prompt.

The rest is policy: style (session or CLI, routed by the style router), template, size (the
template's own unless the session sets one), seed (``random``, fixed per ``scene``, or the
depicted ``character``'s), LoRAs of the depicted characters and of the style (first wins on a
repeated file). Runs on the pipeline's loop.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from app.comfy.inject import RANDOM_SEED_LIMIT, LoraSpec
from app.narrates.agents.base import chat_request, clip
from app.narrates.context import mentions
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import DEFAULT_AGENTS, AgentSettings
from app.narrates.model import FRAMINGS, Character, ScenePlan, SessionSettings, StylePreset
from app.narrates.prompts import PromptTemplate

NAME = "dreamer"
DEFAULTS = DEFAULT_AGENTS[NAME]
MAX_CHARACTERS = 4
MAX_SCENE_CHARS = 300
MAX_TAG_WORDS = 6

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scene", "characters", "framing"],
    "properties": {
        "scene": {"type": "string", "minLength": 1, "maxLength": MAX_SCENE_CHARS},
        "characters": {
            "type": "array",
            "maxItems": MAX_CHARACTERS,
            "items": {"type": "string", "minLength": 1, "maxLength": 60},
        },
        "framing": {"type": "string", "enum": list(FRAMINGS)},
    },
}


def depicted(
    named: Sequence[str], prose: str, characters: Sequence[Character], fallback: Sequence[str] = ()
) -> tuple[Character, ...]:
    """The characters to draw, in cast order, at most ``MAX_CHARACTERS``: those the model named
    that the prose names too. If the model named no one of the cast (names it made up do not
    count): the ``fallback`` names (the beat's cast) the prose names, else everyone the prose
    names — the prose is what happened."""
    in_prose = [c for c in characters if mentions(prose, c.names())]
    wanted = {n.casefold() for n in named}
    named_cast = [c for c in characters if wanted & {n.casefold() for n in c.names()}]
    chosen = [c for c in in_prose if c in named_cast]
    if not named_cast:
        fallback_set = {n.casefold() for n in fallback}
        chosen = [c for c in in_prose if c.name.casefold() in fallback_set] or in_prose
    return tuple(chosen[:MAX_CHARACTERS])


def scene_tags(text: str, characters: Sequence[Character]) -> str:
    """The model's tags on one line: without the characters' names (their looks stand for them),
    duplicates, or sentences (a small model often copies the prose; a tag is a few words)."""
    tags: list[str] = []
    names = {n.casefold() for c in characters for n in c.names()}
    flat = " ".join(text.replace("…", ",").replace("...", ",").split())
    for part in re.split(r"[,;\n]|\.(?:\s|$)", flat):
        tag = part.strip(" .;:!?\"'()[]")
        if not tag or tag.casefold() in names or tag in tags or len(tag.split()) > MAX_TAG_WORDS:
            continue
        tags.append(tag)
    return ", ".join(tags)[:MAX_SCENE_CHARS]


def merge_loras(*groups: Sequence[LoraSpec]) -> tuple[LoraSpec, ...]:
    out: list[LoraSpec] = []
    for group in groups:
        for lora in group:
            if lora.name not in {x.name for x in out}:
                out.append(lora)
    return tuple(out)


def choose_seed(settings: SessionSettings, cast: Sequence[Character], rng: random.Random) -> int | None:
    if settings.seed_policy == "random":
        return None
    if settings.seed_policy == "character":
        for character in cast:
            if character.seed is not None:
                return character.seed
    return settings.seed if settings.seed is not None else rng.randrange(RANDOM_SEED_LIMIT)


def build_plan(
    *,
    tags: str,
    framing: str,
    cast: Sequence[Character],
    settings: SessionSettings,
    style: str | None,
    rng: random.Random,
) -> ScenePlan:
    """The plan from the model's tags and the session's fixed data (no model output but tags)."""
    preset = settings.styles.get(style or "", StylePreset())
    positive = ", ".join(
        part for part in (settings.prefix, preset.prefix, *(c.visual for c in cast), tags) if part.strip()
    )
    negative = ", ".join(part for part in (settings.negative, preset.negative) if part.strip())
    return ScenePlan(
        positive=positive,
        negative=negative,
        characters=tuple(c.name for c in cast),
        framing=framing if framing in FRAMINGS else "scene",
        style=style,
        template=settings.template,
        width=settings.width,
        height=settings.height,
        seed=choose_seed(settings, cast, rng),
        seed_policy=settings.seed_policy,
        loras=merge_loras(*(c.loras for c in cast), preset.loras),
        values=dict(settings.render_values),
        scene_tags=tags,
    )


async def run(
    llm: LlmClient,
    prompt: PromptTemplate,
    params: AgentSettings,
    *,
    prose: str,
    characters: Sequence[Character],
    present: Sequence[str],
    settings: SessionSettings,
    style: str | None,
    rng: random.Random | None = None,
) -> ScenePlan:
    in_prose = [c.name for c in characters if mentions(prose, c.names())]
    request = chat_request(
        prompt, {"character_names": ", ".join(in_prose) or "(none)", "prose": clip(prose, 2400)}, params
    )
    answer = await llm.complete_json(request, SCHEMA, schema_name="dreamer_scene")
    cast = depicted(answer["characters"], prose, characters, fallback=present)
    plan = build_plan(
        tags=scene_tags(answer["scene"], characters),
        framing=answer["framing"],
        cast=cast,
        settings=settings,
        style=style,
        rng=rng or random.SystemRandom(),
    )
    return replace(plan, named=tuple(answer["characters"]))
