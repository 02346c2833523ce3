"""Injection-map detection: propose a map for any pasted API-format workflow.

The proposal follows the graph, not just names: the sampler is found by its inputs, positive and
negative prompts are the text encoders reached from the sampler's ``positive`` / ``negative``
inputs (through conditioning nodes such as ControlNet apply, combine, set-area, guiders), the
image size comes from the latent that the sampler denoises, LoRAs from the ``LoraLoader`` chain
or a LoRA stacker node (or an insertion point after the model loader), ``init_image`` from the
``LoadImage`` whose image is encoded into the sampler's latent. ``_meta.title`` only breaks
ties and is checked against the graph. Whenever several nodes could serve one parameter the
choice is reported as an :class:`Ambiguity` instead of being made silently.

Pure functions over the workflow dict; any thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.comfy.graph import (
    Workflow,
    consumers,
    describe_node,
    is_link,
    links_into,
    node_title,
    sorted_node_ids,
)
from app.comfy.templates import Binding, InjectionMap, LoraChainTarget, LoraStackerTarget, ParamSpec

KNOWN_SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
SAMPLER_HELPER_INPUTS = ("noise", "guider", "sampler", "sigmas")
TEXT_INPUTS = ("text", "text_g", "text_l", "prompt")
SCALAR_PARAMS = (  # parameter, kind, candidate input names on the sampler and its helpers
    ("seed", "seed", ("seed", "noise_seed")),
    ("steps", "int", ("steps",)),
    ("cfg", "float", ("cfg",)),
    ("sampler", "choice", ("sampler_name",)),
    ("scheduler", "choice", ("scheduler",)),
    ("denoise", "float", ("denoise",)),
)
LORA_LOADERS = {"LoraLoader", "LoraLoaderModelOnly"}
_STACKER_PATTERNS = {
    "name": re.compile(r"^(lora|lora_name|lora_name_)_?(\d+)$"),
    "model_strength": re.compile(r"^(strength|model_strength|strength_model|lora_wt|model_weight)_?(\d+)$"),
    "clip_strength": re.compile(r"^(clip_strength|strength_clip|clip_weight)_?(\d+)$"),
    "enabled": re.compile(r"^(enabled|switch|on)_?(\d+)$"),
}


@dataclass(frozen=True)
class Ambiguity:
    """Several nodes could serve ``param``; ``chosen`` was bound, the others were not."""

    param: str
    message: str
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Detection:
    """The proposed map plus what the operator should check before trusting it."""

    injection_map: InjectionMap
    ambiguities: tuple[Ambiguity, ...] = ()
    notes: tuple[str, ...] = ()

    def messages(self) -> list[str]:
        return [f"ambiguous '{a.param}': {a.message}" for a in self.ambiguities] + list(self.notes)


@dataclass
class _State:
    workflow: Workflow
    params: dict[str, ParamSpec] = field(default_factory=dict)
    ambiguities: list[Ambiguity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, kind: str, bindings: Iterable[Binding], **extra) -> None:
        bindings = tuple(dict.fromkeys(bindings))
        if bindings or extra.get("lora") is not None:
            self.params[name] = ParamSpec(name=name, kind=kind, bindings=bindings, **extra)

    def ambiguous(self, param: str, message: str, candidates: Iterable[str] = ()) -> None:
        self.ambiguities.append(Ambiguity(param, message, tuple(candidates)))


def _inputs(workflow: Workflow, node_id: str) -> dict:
    return workflow.get(node_id, {}).get("inputs", {})


def _class(workflow: Workflow, node_id: str) -> str:
    return str(workflow.get(node_id, {}).get("class_type", ""))


def _literal_binding(workflow: Workflow, node_id: str, input_name: str, depth: int = 3) -> Binding | None:
    """Where the value of ``node_id.input_name`` really lives: the input itself when literal,
    else the literal input of the primitive/value node it is linked from."""
    value = _inputs(workflow, node_id).get(input_name)
    if value is None:
        return None
    if not is_link(value):
        return Binding(node_id, input_name)
    if depth == 0:
        return None
    source = value[0]
    source_inputs = _inputs(workflow, source)
    for candidate in (input_name, "value", "seed", "noise_seed", "int", "float", "string", "text", "number"):
        if candidate in source_inputs:
            found = _literal_binding(workflow, source, candidate, depth - 1)
            if found:
                return found
    return None


def _is_sampler(workflow: Workflow, node_id: str) -> bool:
    inputs = _inputs(workflow, node_id)
    if _class(workflow, node_id) in KNOWN_SAMPLERS:
        return True
    linked = {name for name, _, _ in links_into(workflow[node_id])}
    return {"positive", "negative"} <= linked and (
        "latent_image" in linked or "seed" in inputs or "noise_seed" in inputs
    )


def _sampler_cluster(workflow: Workflow, sampler: str) -> list[str]:
    """The sampler plus the helper nodes (noise, guider, sampler, sigmas) linked into it."""
    cluster = [sampler]
    for name, source, _ in links_into(workflow[sampler]):
        if name in SAMPLER_HELPER_INPUTS and source in workflow and source not in cluster:
            cluster.append(source)
    return cluster


def _upstream(workflow: Workflow, start: str, via: tuple[str, ...]) -> list[str]:
    """Nodes reachable from ``start`` by following only inputs named in ``via`` (BFS order)."""
    seen, queue = [start], [start]
    while queue:
        current = queue.pop(0)
        for name, source, _ in links_into(workflow.get(current, {})):
            if name in via and source in workflow and source not in seen:
                seen.append(source)
                queue.append(source)
    return seen


def _latent_root(workflow: Workflow, sampler: str) -> str | None:
    nodes = _upstream(workflow, sampler, ("latent_image", "samples", "latent", "pixels", "image"))
    return next(
        (
            n
            for n in nodes[1:]
            if {"width", "height"} <= set(_inputs(workflow, n))
            or _class(workflow, n) in ("VAEEncode", "LoadImage")
        ),
        None,
    )


def _choose_primary_sampler(state: _State) -> str | None:
    workflow = state.workflow
    samplers = [n for n in sorted_node_ids(workflow) if _is_sampler(workflow, n)]
    if not samplers:
        state.notes.append(
            "no sampler found (no KSampler-like node with positive/negative inputs): "
            "seed, steps, cfg, sampler, scheduler and denoise are not bound"
        )
        return None
    if len(samplers) == 1:
        return samplers[0]
    # The first pass denoises an empty or encoded latent; later passes (hires fix, refiner)
    # denoise another sampler's output. Prefer the first pass.
    fed_by_sampler = {
        s
        for s in samplers
        if any(n in samplers for n in _upstream(workflow, s, ("latent_image", "samples"))[1:])
    }
    first_pass = [s for s in samplers if s not in fed_by_sampler] or samplers
    chosen = first_pass[0]
    others = [s for s in samplers if s != chosen]
    state.ambiguous(
        "sampler",
        f"{len(samplers)} samplers; bound seed/steps/cfg/sampler/scheduler/denoise to "
        f"{describe_node(workflow, chosen)}; not bound: "
        + ", ".join(describe_node(workflow, s) for s in others)
        + " (add their inputs to the map if they should follow)",
        [chosen, *others],
    )
    return chosen


def _encoders_from(workflow: Workflow, node_id: str, input_name: str) -> list[str]:
    """Text-encoder nodes whose output reaches ``node_id.input_name`` through conditioning nodes."""
    found: list[str] = []
    seen: set[tuple[str, int]] = set()
    value = _inputs(workflow, node_id).get(input_name)
    stack = [tuple(value)] if is_link(value) else []
    while stack:
        source, index = stack.pop(0)
        if (source, index) in seen or source not in workflow:
            continue
        seen.add((source, index))
        inputs = _inputs(workflow, source)
        if any(name in inputs for name in TEXT_INPUTS):
            if source not in found:
                found.append(source)
            continue
        linked = {name: (src, idx) for name, src, idx in links_into(workflow[source])}
        if "positive" in linked and "negative" in linked:
            # ControlNet-apply style nodes output (positive, negative) in that order.
            stack.append(linked["positive" if index == 0 else "negative"])
            continue
        for name, link in linked.items():
            if "conditioning" in name or name in ("cond", "positive", "negative", "guider"):
                stack.append(link)
    return found


def _text_bindings(workflow: Workflow, encoder: str) -> list[Binding]:
    bindings = []
    for name in TEXT_INPUTS:
        if name in _inputs(workflow, encoder):
            binding = _literal_binding(workflow, encoder, name)
            if binding is not None:
                bindings.append(binding)
    return bindings


def _detect_prompts(state: _State, sampler: str | None) -> list[str]:
    workflow = state.workflow
    positive: list[str] = []
    negative: list[str] = []
    if sampler is not None:
        for node in _sampler_cluster(workflow, sampler):
            positive += [e for e in _encoders_from(workflow, node, "positive") if e not in positive]
            positive += [e for e in _encoders_from(workflow, node, "conditioning") if e not in positive]
            negative += [e for e in _encoders_from(workflow, node, "negative") if e not in negative]
    if not positive and not negative:
        encoders = [
            n
            for n in sorted_node_ids(workflow)
            if any(t in _inputs(workflow, n) for t in TEXT_INPUTS) and "encode" in _class(workflow, n).lower()
        ]
        positive = [n for n in encoders if "negative" not in node_title(workflow, n).lower()]
        negative = [n for n in encoders if "negative" in node_title(workflow, n).lower()]
        if encoders:
            state.notes.append("prompts found by node title only (no sampler links to follow)")
    both = [n for n in positive if n in negative]
    if both:
        state.ambiguous(
            "positive",
            "the same encoder feeds positive and negative: "
            + ", ".join(describe_node(workflow, n) for n in both),
            both,
        )
        positive = [n for n in positive if n not in both] or positive
        negative = [n for n in negative if n not in both]
    for param, encoders, other in (("positive", positive, "negative"), ("negative", negative, "positive")):
        if not encoders:
            continue
        chosen = encoders[0]
        if len(encoders) > 1:
            by_title = [n for n in encoders if param[:3] in node_title(workflow, n).lower()]
            chosen = by_title[0] if by_title else encoders[0]
            state.ambiguous(
                param,
                f"{len(encoders)} text encoders feed the sampler's {param} input; bound "
                f"{describe_node(workflow, chosen)}, not "
                + ", ".join(describe_node(workflow, n) for n in encoders if n != chosen),
                encoders,
            )
        if other in node_title(workflow, chosen).lower():
            state.ambiguous(
                param,
                f"{describe_node(workflow, chosen)} is titled '{other}' but feeds the "
                f"sampler's {param} input; bound by the graph",
                [chosen],
            )
        bindings = _text_bindings(workflow, chosen)
        if bindings:
            state.add(param, "text", bindings)
    return positive[:1] + negative[:1]


def _detect_sampler_params(state: _State, sampler: str) -> None:
    workflow = state.workflow
    cluster = _sampler_cluster(workflow, sampler)
    for param, kind, names in SCALAR_PARAMS:
        for node in cluster:
            binding = next(
                (
                    b
                    for name in names
                    if name in _inputs(workflow, node)
                    for b in [_literal_binding(workflow, node, name)]
                    if b
                ),
                None,
            )
            if binding is not None:
                state.add(param, kind, [binding], randomize=(kind == "seed"))
                break


def _detect_size(state: _State, sampler: str | None, encoders: list[str]) -> None:
    workflow = state.workflow
    root = _latent_root(workflow, sampler) if sampler else None
    if root is None:
        empties = [
            n
            for n in sorted_node_ids(workflow)
            if re.match(r"^Empty.*Latent", _class(workflow, n)) and "width" in _inputs(workflow, n)
        ]
        root = empties[0] if empties else None
        if len(empties) > 1:
            state.ambiguous(
                "width", "several empty-latent nodes; bound " + describe_node(workflow, root), empties
            )
    if root is not None and _class(workflow, root) in ("VAEEncode", "LoadImage"):
        state.notes.append(
            "the sampler denoises an encoded image: the size follows the input image "
            "(width/height are only bound to size-conditioning inputs)"
        )
        root = None
    for param in ("width", "height"):
        bindings = []
        if root is not None:
            b = _literal_binding(workflow, root, param)
            bindings += [b] if b else []
        for encoder in encoders:  # SDXL size conditioning should match the image size
            for name in (param, f"target_{param}"):
                if isinstance(_inputs(workflow, encoder).get(name), int):
                    bindings.append(Binding(encoder, name))
        state.add(param, "int", bindings)
    if root is not None and "batch_size" in _inputs(workflow, root):
        b = _literal_binding(workflow, root, "batch_size")
        state.add("batch_size", "int", [b] if b else [])


def _loader_root(workflow: Workflow, start: str, input_name: str) -> tuple[str, int] | None:
    """Follow ``input_name`` links upstream to the node that has none (the loader)."""
    value = _inputs(workflow, start).get(input_name)
    seen = set()
    while is_link(value) and value[0] in workflow and value[0] not in seen:
        seen.add(value[0])
        upstream = _inputs(workflow, value[0]).get(input_name)
        if not is_link(upstream):
            return value[0], value[1]
        value = upstream
    return None


def _detect_models(state: _State, sampler: str | None) -> None:
    workflow = state.workflow
    model_chain = _upstream(workflow, sampler, ("model", "guider")) if sampler else []
    for param, input_name in (("checkpoint", "ckpt_name"), ("unet", "unet_name"), ("vae", "vae_name")):
        nodes = [
            n for n in sorted_node_ids(workflow) if isinstance(_inputs(workflow, n).get(input_name), str)
        ]
        if not nodes:
            continue
        preferred = [n for n in nodes if n in model_chain] or nodes
        chosen = preferred[0]
        if len(nodes) > 1:
            state.ambiguous(
                param,
                f"{len(nodes)} nodes have '{input_name}'; bound {describe_node(workflow, chosen)}",
                nodes,
            )
        state.add(param, "choice", [Binding(chosen, input_name)])


def _stacker_target(workflow: Workflow, node: str) -> LoraStackerTarget | None:
    patterns: dict[str, str] = {}
    slots = 0
    for name in _inputs(workflow, node):
        for role, regex in _STACKER_PATTERNS.items():
            match = regex.match(name)
            if match:
                patterns.setdefault(role, name[: match.start(2)] + "{i}" + name[match.end(2) :])
                slots = max(slots, int(match.group(2)))
    if "name" not in patterns or "model_strength" not in patterns:
        return None
    return LoraStackerTarget(
        node=node,
        name=patterns["name"],
        model_strength=patterns["model_strength"],
        clip_strength=patterns.get("clip_strength"),
        enabled=patterns.get("enabled"),
        slots=slots,
    )


def _detect_loras(state: _State, sampler: str | None, encoders: list[str]) -> None:
    workflow = state.workflow
    stackers = [
        n
        for n in sorted_node_ids(workflow)
        if re.search(r"lora_?stack", _class(workflow, n), re.I)
        or "lora stacker" in node_title(workflow, n).lower()
    ]
    targets = [t for t in (_stacker_target(workflow, n) for n in stackers) if t]
    loaders = [n for n in sorted_node_ids(workflow) if _class(workflow, n) in LORA_LOADERS]
    if targets:
        if len(targets) > 1 or loaders:
            state.ambiguous(
                "loras",
                f"bound the LoRA stacker {describe_node(workflow, targets[0].node)}; also found "
                + ", ".join(describe_node(workflow, n) for n in [t.node for t in targets[1:]] + loaders),
                [t.node for t in targets] + loaders,
            )
        state.add("loras", "loras", (), lora=targets[0])
        return
    if loaders:
        starts = [
            n
            for n in loaders
            if not (
                is_link(_inputs(workflow, n).get("model")) and _inputs(workflow, n)["model"][0] in loaders
            )
        ]
        chains = []
        for start in starts:
            chain = [start]
            while True:
                nxt = [c for c, name in consumers(workflow, chain[-1], 0) if c in loaders and name == "model"]
                if not nxt or nxt[0] in chain:
                    break
                chain.append(nxt[0])
            chains.append(chain)
        model_chain = _upstream(workflow, sampler, ("model", "guider")) if sampler else []
        chosen = next((c for c in chains if c[-1] in model_chain), chains[0])
        if len(chains) > 1:
            state.ambiguous(
                "loras",
                f"{len(chains)} LoraLoader chains; bound the one ending at "
                f"{describe_node(workflow, chosen[-1])}",
                [c[0] for c in chains],
            )
        state.add("loras", "loras", (), lora=LoraChainTarget(nodes=tuple(chosen)))
        return
    model_source = _loader_root(workflow, sampler, "model") if sampler else None
    if model_source is None and sampler is not None:
        guider_sources = [_loader_root(workflow, n, "model") for n in _sampler_cluster(workflow, sampler)[1:]]
        model_source = next((s for s in guider_sources if s), None)
    if model_source is None:
        return
    # Encoders that only fall back to a local CLIP (the Luna daemon nodes) never see a LoRA's
    # CLIP patch, so LoRAs for them patch the model only.
    local_encoders = [e for e in encoders if not _class(workflow, e).startswith("LunaShared")]
    clip_sources = {s for s in (_loader_root(workflow, e, "clip") for e in local_encoders) if s}
    if len(clip_sources) > 1:
        state.ambiguous(
            "loras",
            "the prompts use different CLIP models; LoRAs will patch the model only",
            [s[0] for s in clip_sources],
        )
    clip_source = next(iter(clip_sources)) if len(clip_sources) == 1 else None
    state.add("loras", "loras", (), lora=LoraChainTarget(model_source=model_source, clip_source=clip_source))
    if clip_source is None:
        state.notes.append(
            "no CLIP loader feeds the prompts (e.g. daemon text encoding): LoRAs patch the model only"
        )


def _detect_init_image(state: _State, sampler: str | None) -> None:
    workflow = state.workflow
    loads = [
        n
        for n in sorted_node_ids(workflow)
        if "loadimage" in _class(workflow, n).lower() and isinstance(_inputs(workflow, n).get("image"), str)
    ]
    if not loads:
        return
    latent_side = (
        set(_upstream(workflow, sampler, ("latent_image", "samples", "pixels", "image")))
        if sampler
        else set()
    )
    preferred = [n for n in loads if n in latent_side] or loads
    chosen = preferred[0]
    if len(loads) > 1:
        state.ambiguous(
            "init_image", f"{len(loads)} image loaders; bound {describe_node(workflow, chosen)}", loads
        )
    state.add("init_image", "image", [Binding(chosen, "image")])


def _detect_outputs(state: _State) -> None:
    workflow = state.workflow
    saves = [
        n for n in sorted_node_ids(workflow) if isinstance(_inputs(workflow, n).get("filename_prefix"), str)
    ]
    if saves:
        state.add("filename_prefix", "text", [Binding(n, "filename_prefix") for n in saves])


def detect_map(workflow: Workflow) -> Detection:
    """Propose an injection map for an API-format workflow, with ambiguities and notes."""
    state = _State(workflow)
    sampler = _choose_primary_sampler(state)
    encoders = _detect_prompts(state, sampler)
    if sampler is not None:
        _detect_sampler_params(state, sampler)
    _detect_size(state, sampler, encoders)
    _detect_models(state, sampler)
    _detect_loras(state, sampler, encoders)
    _detect_init_image(state, sampler)
    _detect_outputs(state)
    for required in ("positive", "seed"):
        if required not in state.params:
            state.notes.append(f"no '{required}' parameter could be detected")
    return Detection(
        InjectionMap(params=state.params, description="detected"),
        tuple(state.ambiguities),
        tuple(state.notes),
    )
