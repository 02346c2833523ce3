"""Workflow templates: an API-format workflow plus an injection map, found by path or by name.

A template is two files side by side: ``NAME.json`` (the workflow exactly as ComfyUI's
"Export (API)" writes it) and ``NAME.luna.toml`` (the injection map: which logical parameter
goes to which ``(node id, input name)``). A JSON without a map gets the map that
:mod:`app.comfy.detect` proposes, and its detection notes travel with it as warnings.
``workflows/README.md`` documents the map format.

Names are looked up in the user templates directory (``user_dirs().data / "workflows"``) first,
so an operator can override a shipped template, then in the shipped ``workflows/`` directory.
Everything here is pure data and file reading; any thread.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.comfy.filenames import is_safe_filename
from app.comfy.graph import Workflow, ensure_api_format
from app.paths import user_dirs, workflows_dir

MAP_SUFFIX = ".luna.toml"
PARAM_KINDS = ("text", "int", "float", "bool", "choice", "seed", "image", "loras")


class TemplateError(ValueError):
    """A template or its injection map cannot be used; the message names file and parameter."""


class TemplateNotFound(TemplateError):
    """No template file matches the given path or name."""


@dataclass(frozen=True)
class Binding:
    """One input a parameter writes: ``inputs[input]`` of node ``node``."""

    node: str
    input: str


@dataclass(frozen=True)
class LoraChainTarget:
    """LoRAs go through a chain of ``LoraLoader`` nodes.

    ``nodes`` are existing loader nodes in chain order (filled first; unused ones are spliced
    out of the graph). LoRAs beyond them get new ``LoraLoader`` nodes inserted after the last
    chain node, or after ``model_source``/``clip_source`` (``(node id, output index)``) when the
    chain is empty. Without a ``clip_source`` inserted nodes are ``LoraLoaderModelOnly``.
    """

    nodes: tuple[str, ...] = ()
    model_source: tuple[str, int] | None = None
    clip_source: tuple[str, int] | None = None


@dataclass(frozen=True)
class LoraStackerTarget:
    """LoRAs go into the numbered slots of one stacker node (e.g. ``Luna LoRA Stacker``).

    Input names are patterns with ``{i}`` for the slot number (1-based). ``clip_strength`` and
    ``enabled`` are optional: a stacker with one strength per slot gets the model strength.
    """

    node: str
    name: str = "lora_{i}"
    model_strength: str = "strength_{i}"
    clip_strength: str | None = None
    enabled: str | None = "enabled_{i}"
    slots: int = 4


@dataclass(frozen=True)
class ParamSpec:
    """A logical parameter of a template (``positive``, ``seed``, ``loras``, or a custom one).

    ``default`` is used when a render does not set the parameter (``None``: keep the value in the
    workflow). ``randomize`` (seeds) draws a fresh random value when not set.
    """

    name: str
    kind: str
    bindings: tuple[Binding, ...] = ()
    description: str = ""
    default: Any = None
    randomize: bool = False
    minimum: float | None = None
    maximum: float | None = None
    lora: LoraChainTarget | LoraStackerTarget | None = None

    def targets(self) -> tuple[Binding, ...]:
        """Every ``(node, input)`` this parameter may write, for mapping errors back to it."""
        if isinstance(self.lora, LoraStackerTarget):
            lora = self.lora
            names = [p for p in (lora.name, lora.model_strength, lora.clip_strength, lora.enabled) if p]
            return tuple(Binding(lora.node, p.format(i=i)) for i in range(1, lora.slots + 1) for p in names)
        if isinstance(self.lora, LoraChainTarget):
            loader_inputs = ("lora_name", "strength_model", "strength_clip")
            return tuple(Binding(n, i) for n in self.lora.nodes for i in loader_inputs)
        return self.bindings


@dataclass(frozen=True)
class InjectionMap:
    """All parameters of one template, by name, in file order."""

    params: dict[str, ParamSpec] = field(default_factory=dict)
    description: str = ""

    def params_at(self, node: str, input_name: str | None = None) -> list[str]:
        """Names of the parameters writing ``node`` (and ``input_name`` when given)."""
        return [
            spec.name
            for spec in self.params.values()
            if any(b.node == node and (input_name is None or b.input == input_name) for b in spec.targets())
            or (isinstance(spec.lora, LoraChainTarget) and input_name is None and node in spec.lora.nodes)
        ]


@dataclass(frozen=True)
class Template:
    """A loaded template. ``workflow`` is never modified; injection works on a deep copy."""

    name: str
    workflow: Workflow
    injection_map: InjectionMap
    workflow_path: Path | None = None
    map_path: Path | None = None
    detected: bool = False
    notes: tuple[str, ...] = ()
    ui_workflow: dict | None = None  # the UI-format original, when converted (sent as extra_pnginfo)

    @property
    def description(self) -> str:
        return self.injection_map.description


# ---------------------------------------------------------------------------------------------
# map parsing / writing


def _parse_source(value: Any, where: str) -> tuple[str, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return str(value[0]), value[1]
    raise TemplateError(f"{where}: expected [node_id, output_index], got {value!r}")


def _parse_param(name: str, raw: Any, where: str) -> ParamSpec:
    if not isinstance(raw, Mapping):
        raise TemplateError(f"{where}: parameter '{name}' must be a table")
    kind = raw.get("kind")
    if kind not in PARAM_KINDS:
        raise TemplateError(
            f"{where}: parameter '{name}' has kind {kind!r}; expected one of {', '.join(PARAM_KINDS)}"
        )
    bindings = []
    for item in raw.get("bind", []):
        if not isinstance(item, Mapping) or "node" not in item or not isinstance(item.get("input"), str):
            raise TemplateError(
                f"{where}: parameter '{name}': each bind entry needs node and input, got {item!r}"
            )
        bindings.append(Binding(str(item["node"]), item["input"]))
    lora: LoraChainTarget | LoraStackerTarget | None = None
    if kind == "loras":
        stacker = raw.get("stacker")
        if isinstance(stacker, Mapping):
            lora = LoraStackerTarget(
                node=str(stacker["node"]),
                name=stacker.get("name", "lora_{i}"),
                model_strength=stacker.get("model_strength", "strength_{i}"),
                clip_strength=stacker.get("clip_strength"),
                enabled=stacker.get("enabled"),
                slots=int(stacker.get("slots", 4)),
            )
        else:
            lora = LoraChainTarget(
                nodes=tuple(str(n) for n in raw.get("chain", [])),
                model_source=_parse_source(raw.get("model_source"), f"{where}: '{name}'.model_source"),
                clip_source=_parse_source(raw.get("clip_source"), f"{where}: '{name}'.clip_source"),
            )
            if not lora.nodes and lora.model_source is None:
                raise TemplateError(
                    f"{where}: parameter '{name}' (loras) needs a chain, a model_source or a stacker"
                )
    elif not bindings:
        raise TemplateError(f"{where}: parameter '{name}' has no bind entries")
    return ParamSpec(
        name=name,
        kind=kind,
        bindings=tuple(bindings),
        description=str(raw.get("description", "")),
        default=raw.get("default"),
        randomize=bool(raw.get("randomize", False)),
        minimum=raw.get("min"),
        maximum=raw.get("max"),
        lora=lora,
    )


def parse_map(data: Mapping[str, Any], where: str = "injection map") -> InjectionMap:
    """Build an :class:`InjectionMap` from the parsed TOML document."""
    params_raw = data.get("params", {})
    if not isinstance(params_raw, Mapping):
        raise TemplateError(f"{where}: [params] must be a table")
    params = {name: _parse_param(name, raw, where) for name, raw in params_raw.items()}
    description = (
        data.get("template", {}).get("description", "") if isinstance(data.get("template"), Mapping) else ""
    )
    return InjectionMap(params=params, description=str(description))


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character (DEL too) escaped."""
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_map(injection_map: InjectionMap) -> str:
    """The map as ``NAME.luna.toml`` text (round-trips through :func:`parse_map`)."""
    lines = []
    if injection_map.description:
        lines += ["[template]", f"description = {_toml_value(injection_map.description)}", ""]
    for spec in injection_map.params.values():
        lines.append(f"[params.{spec.name}]")
        lines.append(f"kind = {_toml_value(spec.kind)}")
        if spec.description:
            lines.append(f"description = {_toml_value(spec.description)}")
        if spec.bindings:
            lines.append("bind = " + _toml_value([{"node": b.node, "input": b.input} for b in spec.bindings]))
        for key, value in (("default", spec.default), ("min", spec.minimum), ("max", spec.maximum)):
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        if spec.randomize:
            lines.append("randomize = true")
        if isinstance(spec.lora, LoraChainTarget):
            lines.append(f"chain = {_toml_value(list(spec.lora.nodes))}")
            for key, src in (
                ("model_source", spec.lora.model_source),
                ("clip_source", spec.lora.clip_source),
            ):
                if src is not None:
                    lines.append(f"{key} = {_toml_value(list(src))}")
        elif isinstance(spec.lora, LoraStackerTarget):
            stacker = {k: v for k, v in vars(spec.lora).items() if v is not None}
            lines.append(f"stacker = {_toml_value(stacker)}")
        lines.append("")
    return "\n".join(lines)


def check_map_against_workflow(injection_map: InjectionMap, workflow: Workflow, where: str) -> None:
    """Raise :class:`TemplateError` naming the parameter when a binding points at no node."""
    for spec in injection_map.params.values():
        nodes = {b.node for b in spec.bindings}
        if isinstance(spec.lora, LoraStackerTarget):
            nodes.add(spec.lora.node)
        elif isinstance(spec.lora, LoraChainTarget):
            nodes.update(spec.lora.nodes)
            nodes.update(src[0] for src in (spec.lora.model_source, spec.lora.clip_source) if src)
        missing = sorted(n for n in nodes if n not in workflow)
        if missing:
            raise TemplateError(
                f"{where}: parameter '{spec.name}' is bound to node(s) {', '.join('#' + n for n in missing)} "
                "which the workflow does not have"
            )


# ---------------------------------------------------------------------------------------------
# finding and loading


def user_workflows_dir() -> Path:
    """Where the operator keeps their own templates (searched before the shipped ones)."""
    return user_dirs().data / "workflows"


def template_dirs() -> list[Path]:
    return [user_workflows_dir(), workflows_dir()]


def find_template(ref: str | Path, search_dirs: Iterable[Path] | None = None) -> Path:
    """Resolve a template reference (a file path, or a name in the template dirs) to its JSON."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    text = str(ref)
    if path.suffix == ".json" or "/" in text or "\\" in text:
        raise TemplateNotFound(f"template file not found: {path}")
    if not is_safe_filename(f"{text}.json"):
        # "CON" would open the console device on Windows, "c:x" a drive-relative path: a name
        # that is not a plain file name cannot be a template in the template directories.
        raise TemplateNotFound(f"'{text}' is not a template name (names are plain file names)")
    dirs = list(search_dirs) if search_dirs is not None else template_dirs()
    for directory in dirs:
        candidate = directory / f"{text}.json"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.json")})
    raise TemplateNotFound(
        f"no template named '{text}' in {', '.join(str(d) for d in dirs)}"
        + (f"; known: {', '.join(known)}" if known else "")
    )


def list_templates(search_dirs: Iterable[Path] | None = None) -> dict[str, Path]:
    """Template names → JSON paths; a user template hides a shipped one of the same name."""
    found: dict[str, Path] = {}
    for directory in list(search_dirs) if search_dirs is not None else template_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                found.setdefault(path.stem, path)
    return found


def map_path_for(workflow_path: Path) -> Path:
    return workflow_path.with_name(workflow_path.stem + MAP_SUFFIX)


def template_from_workflow(
    name: str,
    data: Any,
    *,
    injection_map: InjectionMap | None = None,
    source: str = "workflow",
    workflow_path: Path | None = None,
    map_path: Path | None = None,
    ui_workflow: dict | None = None,
    notes: tuple[str, ...] = (),
) -> Template:
    """Build a template from parsed JSON; without a map the detected one is used."""
    workflow = ensure_api_format(data, source)
    if injection_map is None:
        from app.comfy.detect import detect_map  # detect imports this module's types

        detection = detect_map(workflow)
        return Template(
            name=name,
            workflow=workflow,
            injection_map=detection.injection_map,
            workflow_path=workflow_path,
            detected=True,
            notes=notes + tuple(detection.messages()),
            ui_workflow=ui_workflow,
        )
    check_map_against_workflow(injection_map, workflow, str(map_path or source))
    return Template(
        name=name,
        workflow=workflow,
        injection_map=injection_map,
        workflow_path=workflow_path,
        map_path=map_path,
        notes=notes,
        ui_workflow=ui_workflow,
    )


def read_json(path: Path) -> Any:
    """Parsed JSON of a template file; :class:`TemplateError` naming the file otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{path} is not valid JSON: {exc}") from exc


def read_map(workflow_path: Path) -> tuple[InjectionMap | None, Path | None]:
    """The injection map next to a workflow file, if there is one."""
    map_file = map_path_for(workflow_path)
    if not map_file.is_file():
        return None, None
    try:
        return parse_map(tomllib.loads(map_file.read_text(encoding="utf-8")), str(map_file)), map_file
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{map_file} is not valid TOML: {exc}") from exc


def load_template(ref: str | Path, search_dirs: Iterable[Path] | None = None) -> Template:
    """Find and load a template.

    Raises :class:`TemplateError` (not found, unreadable, bad map) or
    :class:`~app.comfy.graph.WorkflowFormatError` (not API format; the UI-format case says how
    to export the API format).
    """
    path = find_template(ref, search_dirs)
    data = read_json(path)
    injection_map, map_file = read_map(path)
    return template_from_workflow(
        path.stem, data, injection_map=injection_map, source=str(path), workflow_path=path, map_path=map_file
    )
