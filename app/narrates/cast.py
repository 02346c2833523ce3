"""Cast files: a session's characters, world notes and settings in one TOML document.

Format (``resources/cast.example.toml`` is a complete example)::

    [session]                     # all optional; CLI flags override
    title = "The Lighthouse"
    premise = "A storm cuts the island off the mainland."
    direction = "Slow-burning mystery, second person, present tense."
    style = "anime"               # router style
    template = "sdxl_txt2img"     # template name or workflow file
    width = 1024                  # both or neither; default: the template's own size
    height = 1024
    seed_policy = "scene"         # random | scene | character
    seed = 1234                   # optional fixed seed for every scene
    prefix = "masterpiece, best quality"
    negative = "lowres, blurry"
    [session.render]              # any other template parameter (steps, cfg, checkpoint …)
    steps = 24

    [styles.anime]                # per-style prefix, negative and LoRAs
    prefix = "anime style, cel shading"
    loras = [{ name = "style_anime.safetensors", strength = 0.7 }]

    [[characters]]
    name = "Mira"
    description = "A curious cartographer who hides her fear."   # text stages only
    visual = "young woman, short silver hair, green eyes, brown leather coat"
    aliases = ["the cartographer"]
    loras = [{ name = "mira.safetensors", strength = 0.8 }]
    seed = 42

    [[world]]
    title = "The lighthouse"
    keys = ["lighthouse", "lamp"]   # empty or absent: always included
    content = "A stone tower whose lamp has been dark for ten years."
    priority = 10

An unknown key anywhere is an error naming the file and the key (a typo must not silently drop
a character's LoRA). Pure parsing; any thread.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.comfy.inject import LoraSpec
from app.narrates.errors import CastError
from app.narrates.model import SEED_POLICIES, Character, SessionSettings, StylePreset, WorldNote

_SESSION_KEYS = {
    "title",
    "premise",
    "direction",
    "style",
    "template",
    "width",
    "height",
    "seed_policy",
    "seed",
    "prefix",
    "negative",
    "render",
    "context_tokens",
}
_STYLE_KEYS = {"prefix", "negative", "loras"}
_CHARACTER_KEYS = {"name", "description", "visual", "aliases", "loras", "seed"}
_WORLD_KEYS = {"title", "content", "keys", "priority"}
_LORA_KEYS = {"name", "strength", "clip"}
_TOP_KEYS = {"session", "styles", "characters", "world"}


@dataclass(frozen=True)
class Cast:
    """A parsed cast file."""

    title: str | None
    settings: Mapping[str, Any]  # SessionSettings fields present in the file
    characters: tuple[Character, ...]
    world: tuple[WorldNote, ...]

    def apply(self, settings: SessionSettings) -> SessionSettings:
        return SessionSettings.from_dict({**settings.as_dict(), **self.settings})


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> CastError:
        return CastError(f"{self.source}: {where}: {message}")

    def table(self, value: Any, where: str, known: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a table, got {type(value).__name__}")
        unknown = sorted(set(value) - known)
        if unknown:
            raise self.fail(
                where,
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                f"(known: {', '.join(sorted(known))})",
            )
        return value

    def text(self, table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
        value = table.get(key, "")
        if required and not value:
            raise self.fail(where, f"'{key}' is required")
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"expected a string, got {value!r}")
        return value.strip()

    def integer(self, table: Mapping[str, Any], key: str, where: str, *, low: int = 0) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(f"{where}.{key}", f"expected an integer ≥ {low}, got {value!r}")
        return value

    def strings(self, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(f"{where}.{key}", f"expected a list of non-empty strings, got {value!r}")
        return tuple(v.strip() for v in value)

    def loras(self, table: Mapping[str, Any], where: str) -> tuple[LoraSpec, ...]:
        value = table.get("loras", [])
        if not isinstance(value, list):
            raise self.fail(f"{where}.loras", f"expected a list of tables, got {value!r}")
        out = []
        for index, item in enumerate(value):
            at = f"{where}.loras[{index}]"
            lora = self.table(item, at, _LORA_KEYS)
            name = self.text(lora, "name", at, required=True)
            numbers = []
            for key in ("strength", "clip"):
                number = lora.get(key)
                if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                    raise self.fail(f"{at}.{key}", f"expected a number, got {number!r}")
                numbers.append(number)
            strength, clip = numbers
            out.append(LoraSpec(name, 1.0 if strength is None else float(strength), clip))
        return tuple(out)


def parse_cast(data: Mapping[str, Any], source: str = "cast") -> Cast:
    """Validate a parsed TOML document; :class:`CastError` names the first bad key."""
    r = _Reader(source)
    top = r.table(data, "top level", _TOP_KEYS)
    session = r.table(top.get("session", {}), "[session]", _SESSION_KEYS)
    settings: dict[str, Any] = {}
    for key in ("premise", "direction", "template", "prefix", "negative", "style"):
        if key in session:
            settings[key] = r.text(session, key, "[session]") or None
    if settings.get("template") is None:
        settings.pop("template", None)
    for key in ("width", "height", "seed", "context_tokens"):
        if key in session:
            settings[key] = r.integer(session, key, "[session]", low=16 if key in ("width", "height") else 0)
    if ("width" in settings) != ("height" in settings):
        raise r.fail("[session]", "set both width and height, or neither (the template's own size)")
    if "seed_policy" in session:
        policy = session["seed_policy"]
        if policy not in SEED_POLICIES:
            raise r.fail(
                "[session].seed_policy", f"expected one of {', '.join(SEED_POLICIES)}, got {policy!r}"
            )
        settings["seed_policy"] = policy
    if "render" in session:
        render = session["render"]
        if not isinstance(render, Mapping):
            raise r.fail("[session].render", "expected a table of template parameters")
        settings["render_values"] = dict(render)
    styles_raw = top.get("styles", {})
    if not isinstance(styles_raw, Mapping):
        raise r.fail("[styles]", "expected a table of style tables")
    styles = {}
    for name, raw in styles_raw.items():
        where = f"[styles.{name}]"
        table = r.table(raw, where, _STYLE_KEYS)
        styles[name] = StylePreset(
            prefix=r.text(table, "prefix", where),
            negative=r.text(table, "negative", where),
            loras=r.loras(table, where),
        )
    if styles:
        settings["styles"] = {k: v.as_dict() for k, v in styles.items()}

    characters: list[Character] = []
    seen: set[str] = set()
    raw_characters = top.get("characters", [])
    if not isinstance(raw_characters, list):
        raise r.fail("characters", "expected [[characters]] tables")
    for index, raw in enumerate(raw_characters):
        where = f"characters[{index}]"
        table = r.table(raw, where, _CHARACTER_KEYS)
        name = r.text(table, "name", where, required=True)
        if name.casefold() in seen:
            raise r.fail(where, f"a second character named {name!r}")
        seen.add(name.casefold())
        characters.append(
            Character(
                name=name,
                description=r.text(table, "description", where),
                visual=r.text(table, "visual", where),
                aliases=r.strings(table, "aliases", where),
                loras=r.loras(table, where),
                seed=r.integer(table, "seed", where),
            )
        )
    world: list[WorldNote] = []
    raw_world = top.get("world", [])
    if not isinstance(raw_world, list):
        raise r.fail("world", "expected [[world]] tables")
    for index, raw in enumerate(raw_world):
        where = f"world[{index}]"
        table = r.table(raw, where, _WORLD_KEYS)
        priority = table.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise r.fail(f"{where}.priority", f"expected an integer, got {priority!r}")
        world.append(
            WorldNote(
                title=r.text(table, "title", where, required=True),
                content=r.text(table, "content", where, required=True),
                keys=r.strings(table, "keys", where),
                priority=priority,
            )
        )
    title = r.text(session, "title", "[session]") or None
    return Cast(title=title, settings=settings, characters=tuple(characters), world=tuple(world))


def load_cast(path: str | Path) -> Cast:
    """Read and validate a cast file."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CastError(f"cannot read cast file {file}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CastError(f"{file} is not valid TOML: {exc}") from exc
    return parse_cast(data, str(file))
