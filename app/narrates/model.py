"""Typed records of a story: session settings, characters, world notes and each agent's output.

Every class is a frozen dataclass with ``as_dict``/``from_dict`` for the JSON columns of
:mod:`app.narrates.store` and the ``--json`` output of ``luna story``. Pure data; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.comfy.inject import LoraSpec

STAGES = ("preprocessor", "strategist", "writer", "dreamer")
SEED_POLICIES = ("random", "scene", "character")
MODES = ("do", "say", "story", "see", "ooc")
ENTITY_TYPES = ("character", "place", "item", "other")
FRAMINGS = ("portrait", "scene", "wide")


def lora_to_dict(lora: LoraSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": lora.name, "strength": lora.strength_model}
    if lora.strength_clip is not None:
        out["clip"] = lora.strength_clip
    return out


def lora_from_dict(data: Mapping[str, Any]) -> LoraSpec:
    clip = data.get("clip")
    return LoraSpec(
        str(data["name"]), float(data.get("strength", 1.0)), None if clip is None else float(clip)
    )


@dataclass(frozen=True)
class StylePreset:
    """Per-style additions: a positive prefix, a negative, and LoRAs applied to every scene of it."""

    prefix: str = ""
    negative: str = ""
    loras: tuple[LoraSpec, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "negative": self.negative,
            "loras": [lora_to_dict(x) for x in self.loras],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StylePreset:
        return cls(
            prefix=str(data.get("prefix", "")),
            negative=str(data.get("negative", "")),
            loras=tuple(lora_from_dict(x) for x in data.get("loras", ())),
        )


@dataclass(frozen=True)
class SessionSettings:
    """How a session tells and renders: premise, steering, style, template, size, seed policy.

    ``template`` is a template name or a workflow file path (as ``luna render`` takes it);
    ``width``/``height`` None keep the template's own size. ``seed_policy``: ``random`` (every
    render draws a seed), ``scene`` (a seed drawn once per scene, kept by re-renders unless
    changed; ``seed`` fixes it for the whole session), ``character`` (the first present
    character's seed, else as ``scene``).
    """

    premise: str = ""
    direction: str = ""
    style: str | None = None
    template: str = "sdxl_txt2img"
    width: int | None = None
    height: int | None = None
    seed_policy: str = "scene"
    seed: int | None = None
    prefix: str = ""
    negative: str = "lowres, blurry, bad anatomy, watermark, text"
    styles: Mapping[str, StylePreset] = field(default_factory=dict)
    render_values: Mapping[str, Any] = field(
        default_factory=dict
    )  # extra template values (steps, checkpoint)
    context_tokens: int = 2048

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["styles"] = {name: preset.as_dict() for name, preset in self.styles.items()}
        data["render_values"] = dict(self.render_values)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSettings:
        values = dict(data)
        values["styles"] = {k: StylePreset.from_dict(v) for k, v in data.get("styles", {}).items()}
        values["render_values"] = dict(data.get("render_values", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    def with_changes(self, **changes: Any) -> SessionSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Character:
    """A cast member. ``description`` (personality, history) goes to the text stages only;
    ``visual`` — fixed visual descriptors — is all the Dreamer ever sees of the character."""

    name: str
    description: str = ""
    visual: str = ""
    aliases: tuple[str, ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    seed: int | None = None
    id: int | None = None

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class WorldNote:
    """A lorebook entry: included when one of ``keys`` occurs in the recent text (always when
    ``keys`` is empty), highest ``priority`` first, within the context budget."""

    title: str
    content: str
    keys: tuple[str, ...] = ()
    priority: int = 0
    id: int | None = None

    @property
    def constant(self) -> bool:
        return not self.keys


@dataclass(frozen=True)
class Entity:
    """A name the Preprocessor found; ``known`` and ``canonical`` come from the session's cast and
    world notes, not from the model."""

    name: str
    type: str
    known: bool = False
    canonical: str | None = None


@dataclass(frozen=True)
class Action:
    """Preprocessor output: the player's input as a normalized action."""

    mode: str
    action: str
    intent: str
    entities: tuple[Entity, ...] = ()
    wants_image: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Action:
        return cls(
            mode=data["mode"],
            action=data["action"],
            intent=data["intent"],
            entities=tuple(Entity(**e) for e in data.get("entities", ())),
            wants_image=bool(data.get("wants_image", False)),
        )


@dataclass(frozen=True)
class Beat:
    """Strategist output: the next beat of the story."""

    goal: str
    stakes: str
    present: tuple[str, ...]
    location: str
    world_changes: tuple[str, ...] = ()
    image_worthy: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Beat:
        return cls(
            goal=data["goal"],
            stakes=data["stakes"],
            present=tuple(data.get("present", ())),
            location=data["location"],
            world_changes=tuple(data.get("world_changes", ())),
            image_worthy=bool(data.get("image_worthy", True)),
        )


@dataclass(frozen=True)
class ScenePlan:
    """Dreamer output: everything a render of the scene needs, before the template is filled.

    ``values`` are the template parameters to inject besides prompt/negative/seed/size/loras
    (from the session's ``render_values``). ``seed`` None means a fresh random seed per render.
    """

    positive: str
    negative: str
    characters: tuple[str, ...]
    framing: str
    style: str | None
    template: str
    width: int | None
    height: int | None
    seed: int | None
    seed_policy: str
    loras: tuple[LoraSpec, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    scene_tags: str = ""
    named: tuple[str, ...] = ()  # the characters the model named (before the prose check)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loras"] = [lora_to_dict(x) for x in self.loras]
        data["values"] = dict(self.values)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScenePlan:
        values = dict(data)
        values["characters"] = tuple(data.get("characters", ()))
        values["named"] = tuple(data.get("named", ()))
        values["loras"] = tuple(lora_from_dict(x) for x in data.get("loras", ()))
        values["values"] = dict(data.get("values", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})
