"""Parameter injection: a template plus values → a ready-to-submit API workflow.

The template is never modified (its workflow is deep-copied). Every value is checked against its
parameter's kind before it is written; unknown parameters and bindings that point at nothing
are errors that name the parameter. LoRAs are a list of :class:`LoraSpec` applied to the
template's ``LoraLoader`` chain (filling existing loaders, splicing unused ones out, inserting
new ones after the model loader) or to the numbered slots of a LoRA stacker node.

:func:`parse_value` turns command-line text (``--set steps=30``) into the typed value.
Pure functions; any thread.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.comfy.graph import Workflow, consumers, new_node_id
from app.comfy.templates import LoraChainTarget, LoraStackerTarget, ParamSpec, Template

SEED_MAX = 2**64 - 1
RANDOM_SEED_LIMIT = 2**32  # what ComfyUI's UI draws from; fits every sampler's seed range


class InjectionError(ValueError):
    """A value cannot be injected; ``param`` names the parameter concerned."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class UnknownParameterError(InjectionError):
    """The template's map has no such parameter."""


class ParameterTypeError(InjectionError):
    """The value does not fit the parameter's kind or range."""


class BindingError(InjectionError):
    """The map binds the parameter to a node or input the workflow lacks."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: file name as the ComfyUI instance lists it, and two strengths."""

    name: str
    strength_model: float = 1.0
    strength_clip: float | None = None  # None: same as strength_model

    @property
    def clip(self) -> float:
        return self.strength_model if self.strength_clip is None else self.strength_clip


@dataclass(frozen=True)
class InjectedWorkflow:
    """The workflow to submit, the values actually applied (random seeds resolved) and warnings."""

    workflow: Workflow
    values: dict[str, Any]
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# value checking


def _number_in_range(spec: ParamSpec, value: float) -> None:
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterTypeError(
            spec.name, f"parameter '{spec.name}': {value} is below the minimum {spec.minimum}"
        )
    if spec.maximum is not None and value > spec.maximum:
        raise ParameterTypeError(
            spec.name, f"parameter '{spec.name}': {value} is above the maximum {spec.maximum}"
        )


def _lora_from(spec: ParamSpec, item: Any) -> LoraSpec:
    if isinstance(item, LoraSpec):
        return item
    if isinstance(item, str) and item:
        return LoraSpec(item)
    if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
        model = item.get("strength_model", item.get("model", item.get("strength", 1.0)))
        clip = item.get("strength_clip", item.get("clip"))
        for label, number in (("model strength", model), ("clip strength", clip)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                raise ParameterTypeError(
                    spec.name,
                    f"parameter '{spec.name}': LoRA {item['name']!r} {label} "
                    f"must be a number, got {number!r}",
                )
        return LoraSpec(item["name"], float(model), None if clip is None else float(clip))
    raise ParameterTypeError(
        spec.name,
        f"parameter '{spec.name}': each LoRA needs a name (and optional model/clip strengths), got {item!r}",
    )


def check_value(spec: ParamSpec, value: Any, rng: random.Random | None = None) -> Any:
    """Return ``value`` normalised for ``spec.kind`` or raise :class:`ParameterTypeError`."""
    kind, name = spec.kind, spec.name
    if kind == "seed":
        if value == "random" or value == -1:
            return (rng or random.SystemRandom()).randrange(RANDOM_SEED_LIMIT)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
            raise ParameterTypeError(
                name, f"parameter '{name}' (seed) must be an integer 0..2^64-1 or 'random', got {value!r}"
            )
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterTypeError(name, f"parameter '{name}' must be an integer, got {value!r}")
        _number_in_range(spec, value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterTypeError(name, f"parameter '{name}' must be a number, got {value!r}")
        _number_in_range(spec, float(value))
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterTypeError(name, f"parameter '{name}' must be true or false, got {value!r}")
        return value
    if kind in ("text", "choice", "image"):
        if not isinstance(value, str) or (kind != "text" and not value):
            raise ParameterTypeError(
                name,
                f"parameter '{name}' must be {'a' if kind == 'text' else 'a non-empty'} "
                f"string, got {value!r}",
            )
        return value
    if kind == "loras":
        if isinstance(value, (str, Mapping, LoraSpec)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ParameterTypeError(name, f"parameter '{name}' must be a list of LoRAs, got {value!r}")
        return [_lora_from(spec, item) for item in value]
    raise ParameterTypeError(name, f"parameter '{name}' has unknown kind {kind!r}")


def parse_value(spec: ParamSpec, text: str) -> Any:
    """Parse command-line text for a parameter (``--set name=text``) into a typed value.

    ``loras`` accepts JSON (``[{"name": "a.safetensors", "model": 0.8, "clip": 0.6}]``) or the
    short form ``a.safetensors:0.8:0.6,b.safetensors`` (strengths optional).
    """
    kind, name = spec.kind, spec.name
    try:
        if kind == "seed":
            return "random" if text.strip().lower() in ("random", "-1") else int(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "loras":
            stripped = text.strip()
            if stripped.startswith("["):
                return json.loads(stripped)
            loras = []
            for part in filter(None, (p.strip() for p in stripped.split(","))):
                fields = part.split(":")
                model = float(fields[1]) if len(fields) > 1 and fields[1] else 1.0
                clip = float(fields[2]) if len(fields) > 2 and fields[2] else None
                loras.append(LoraSpec(fields[0], model, clip))
            return loras
    except ValueError as exc:
        raise ParameterTypeError(name, f"parameter '{name}' ({kind}): cannot read {text!r}") from exc
    return text


# ---------------------------------------------------------------------------------------------
# writing


def _set_input(workflow: Workflow, spec: ParamSpec, node: str, input_name: str, value: Any) -> None:
    if node not in workflow:
        raise BindingError(
            spec.name, f"parameter '{spec.name}' is bound to node #{node}, which the workflow lacks"
        )
    workflow[node].setdefault("inputs", {})[input_name] = value


def _splice_out(workflow: Workflow, node: str) -> None:
    """Remove a LoRA loader, linking its consumers to its own model/clip inputs."""
    inputs = workflow[node]["inputs"]
    for output_index, upstream_name in ((0, "model"), (1, "clip")):
        for consumer, input_name in consumers(workflow, node, output_index):
            workflow[consumer]["inputs"][input_name] = copy.deepcopy(inputs.get(upstream_name))
    del workflow[node]


def _apply_chain(
    workflow: Workflow, spec: ParamSpec, target: LoraChainTarget, loras: list[LoraSpec], warnings: list[str]
) -> None:
    chain = list(target.nodes)
    for node in chain:
        if node not in workflow:
            raise BindingError(
                spec.name, f"parameter '{spec.name}' lists LoRA loader #{node}, which the workflow lacks"
            )
    for node, lora in zip(chain, loras):
        inputs = workflow[node]["inputs"]
        inputs["lora_name"] = lora.name
        inputs["strength_model"] = lora.strength_model
        if "clip" in inputs or workflow[node]["class_type"] == "LoraLoader":
            inputs["strength_clip"] = lora.clip
        elif lora.strength_clip not in (None, 0.0):
            warnings.append(
                f"LoRA {lora.name!r}: loader #{node} patches the model only; clip strength ignored"
            )
    for node in chain[len(loras) :]:
        _splice_out(workflow, node)
    extra = loras[len(chain) :]
    if not extra:
        return
    if chain:
        last = chain[-1]
        model_source: tuple[str, int] | None = (last, 0)
        clip_source = (last, 1) if workflow[last]["class_type"] == "LoraLoader" else None
    else:
        model_source, clip_source = target.model_source, target.clip_source
    if model_source is None or model_source[0] not in workflow:
        raise BindingError(
            spec.name, f"parameter '{spec.name}': no place to insert {len(extra)} more LoRA loader(s)"
        )
    model_consumers = consumers(workflow, *model_source)
    clip_consumers = consumers(workflow, *clip_source) if clip_source else []
    current_model, current_clip = list(model_source), list(clip_source) if clip_source else None
    for position, lora in enumerate(extra, start=len(chain) + 1):
        node = new_node_id(workflow)
        if current_clip is not None:
            workflow[node] = {
                "class_type": "LoraLoader",
                "_meta": {"title": f"LoRA {position} (Luna)"},
                "inputs": {
                    "model": current_model,
                    "clip": current_clip,
                    "lora_name": lora.name,
                    "strength_model": lora.strength_model,
                    "strength_clip": lora.clip,
                },
            }
            current_model, current_clip = [node, 0], [node, 1]
        else:
            if lora.strength_clip not in (None, 0.0):
                warnings.append(
                    f"LoRA {lora.name!r}: this template encodes text outside ComfyUI; clip strength ignored"
                )
            workflow[node] = {
                "class_type": "LoraLoaderModelOnly",
                "_meta": {"title": f"LoRA {position} (Luna)"},
                "inputs": {
                    "model": current_model,
                    "lora_name": lora.name,
                    "strength_model": lora.strength_model,
                },
            }
            current_model = [node, 0]
    for consumer, input_name in model_consumers:
        workflow[consumer]["inputs"][input_name] = list(current_model)
    for consumer, input_name in clip_consumers:
        workflow[consumer]["inputs"][input_name] = list(current_clip)


def _apply_stacker(
    workflow: Workflow, spec: ParamSpec, target: LoraStackerTarget, loras: list[LoraSpec], warnings: list[str]
) -> None:
    if target.node not in workflow:
        raise BindingError(
            spec.name, f"parameter '{spec.name}' is bound to stacker #{target.node}, which the workflow lacks"
        )
    if len(loras) > target.slots:
        raise ParameterTypeError(
            spec.name,
            f"parameter '{spec.name}': {len(loras)} LoRAs but the stacker "
            f"#{target.node} has {target.slots} slots",
        )
    inputs = workflow[target.node]["inputs"]
    for slot in range(1, target.slots + 1):
        if slot <= len(loras):
            lora = loras[slot - 1]
            inputs[target.name.format(i=slot)] = lora.name
            inputs[target.model_strength.format(i=slot)] = lora.strength_model
            if target.clip_strength:
                inputs[target.clip_strength.format(i=slot)] = lora.clip
            elif lora.strength_clip is not None and lora.strength_clip != lora.strength_model:
                warnings.append(
                    f"LoRA {lora.name!r}: the stacker has one strength per slot; used the model strength"
                )
            if target.enabled:
                inputs[target.enabled.format(i=slot)] = True
        elif target.enabled:
            inputs[target.enabled.format(i=slot)] = False
        else:
            inputs[target.model_strength.format(i=slot)] = 0.0
            if target.clip_strength:
                inputs[target.clip_strength.format(i=slot)] = 0.0


def inject(
    template: Template, values: Mapping[str, Any] | None = None, *, rng: random.Random | None = None
) -> InjectedWorkflow:
    """Apply ``values`` (parameter name → value) to a deep copy of the template's workflow.

    Parameters not given use their ``default`` (or, for ``randomize`` seeds, a random value);
    otherwise the workflow keeps its own value. Raises :class:`InjectionError` subclasses.
    """
    values = dict(values or {})
    params = template.injection_map.params
    unknown = [name for name in values if name not in params]
    if unknown:
        raise UnknownParameterError(
            unknown[0],
            f"template '{template.name}' has no parameter '{unknown[0]}' "
            f"(it has: {', '.join(params) or 'none'}); add a binding to its map to use it",
        )
    workflow = copy.deepcopy(template.workflow)
    applied: dict[str, Any] = {}
    warnings: list[str] = []
    for name, spec in params.items():
        if name in values:
            raw = values[name]
        elif spec.default is not None:
            raw = spec.default
        elif spec.randomize and spec.kind == "seed":
            raw = "random"
        else:
            continue
        value = check_value(spec, raw, rng)
        applied[name] = value
        if spec.kind == "loras":
            if isinstance(spec.lora, LoraStackerTarget):
                _apply_stacker(workflow, spec, spec.lora, value, warnings)
            elif isinstance(spec.lora, LoraChainTarget):
                _apply_chain(workflow, spec, spec.lora, value, warnings)
            continue
        if not spec.bindings:
            raise BindingError(
                name, f"parameter '{name}' of template '{template.name}' is not bound to any input"
            )
        for binding in spec.bindings:
            _set_input(workflow, spec, binding.node, binding.input, value)
    return InjectedWorkflow(workflow=workflow, values=applied, warnings=tuple(warnings))
