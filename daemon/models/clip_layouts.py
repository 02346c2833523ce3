"""CLIP text-encoder weight layouts → the daemon's :class:`ClipTextModel` (sizes from shapes).

Owns recognising and converting the layouts users have:

* HF transformers (``CLIPTextModel`` / ``CLIPTextModelWithProjection``; ComfyUI's
  ``clip_l.safetensors`` / ``clip_g.safetensors``, diffusers ``text_encoder(_2)``, SD1.5 and
  SDXL-L inside checkpoints), with or without the ``text_model.`` prefix (or below a wrapper
  prefix another tool added, e.g. ``clip_l.transformer.``); an optional
  ``position_ids`` buffer (float in old files) is ignored;
* OpenCLIP (bigG inside SDXL checkpoints): fused ``attn.in_proj_*`` (q, k, v stacked in that
  order), bare ``positional_embedding``, ``ln_final``, and ``text_projection`` stored for
  ``x @ P`` (so it is transposed into a Linear weight).

Keys outside the text model (``vision_model.*``, ``logit_scale``, …) are ignored; missing keys
raise :class:`ModelLoadError` naming them in the file's own spelling. Pure functions, called on
the loading thread; the module is built on the meta device and the converted tensors are
assigned, so full-size models are never initialised twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from daemon.models.clip_model import HEAD_DIM, Activation, ClipTextConfig, ClipTextModel
from daemon.models.io import ModelLoadError, require_keys

Layout = Literal["hf", "openclip"]

_OPENCLIP_MARKER = "transformer.resblocks.0.ln_1.weight"
_HF_MARKER = "embeddings.token_embedding.weight"


def detect_layout(state: Mapping[str, torch.Tensor], *, what: str) -> tuple[Layout, str]:
    """``(layout, prefix)`` of the one text encoder in ``state``.

    The prefix is whatever precedes the layout's marker key: ``""`` / ``"text_model."`` in
    plain files, a wrapper such as ``"clip_l.transformer.text_model."`` in files saved by
    other tools. A file holding several text encoders (a whole checkpoint) is refused.
    """
    found: list[tuple[Layout, str]] = []
    for key in state:
        if key.endswith(_OPENCLIP_MARKER) and (
            key == _OPENCLIP_MARKER or key[: -len(_OPENCLIP_MARKER)].endswith(".")
        ):
            prefix = key[: -len(_OPENCLIP_MARKER)]
            if prefix + "token_embedding.weight" in state:  # not OpenCLIP's vision tower ("visual.")
                found.append(("openclip", prefix))
        elif key.endswith(_HF_MARKER) and (key == _HF_MARKER or key[: -len(_HF_MARKER)].endswith(".")):
            found.append(("hf", key[: -len(_HF_MARKER)]))
    if len(found) == 1:
        return found[0]
    if found:
        prefixes = ", ".join(repr(prefix) for _, prefix in sorted(found))
        raise ModelLoadError(
            f"{what}: holds several text encoders (under {prefixes}); "
            "pass a full checkpoint as checkpoint=, or one encoder per file"
        )
    sample = ", ".join(sorted(state)[:5]) or "no tensors"
    raise ModelLoadError(f"{what}: not a CLIP text encoder in HF or OpenCLIP layout (first keys: {sample})")


def _projection_key(layout: Layout, prefix: str, state: Mapping[str, torch.Tensor]) -> str:
    """Where ``text_projection`` lives: beside ``text_model.`` (HF) or beside the blocks (OpenCLIP)."""
    if layout == "hf":
        return prefix.removesuffix("text_model.") + "text_projection.weight"
    bare = prefix + "text_projection"
    return bare if bare in state else bare + ".weight"


def _count_layers(state: Mapping[str, torch.Tensor], stem: str) -> int:
    indices = {
        int(k[len(stem) :].split(".", 1)[0])
        for k in state
        if k.startswith(stem) and k[len(stem) :].split(".", 1)[0].isdigit()
    }
    if not indices:
        raise ModelLoadError(f"no transformer layers found under {stem!r}")
    return max(indices) + 1


def _hf_names(prefix: str, layers: int) -> dict[str, list[str]]:
    """Internal name → source key(s) for the HF layout (q/k/v are concatenated)."""
    block = prefix + "encoder.layers.{n}."
    names: dict[str, list[str]] = {
        "token_embedding.weight": [prefix + "embeddings.token_embedding.weight"],
        "position_embedding": [prefix + "embeddings.position_embedding.weight"],
        "final_norm.weight": [prefix + "final_layer_norm.weight"],
        "final_norm.bias": [prefix + "final_layer_norm.bias"],
    }
    for n in range(layers):
        src = block.format(n=n)
        dst = f"layers.{n}."
        for kind in ("weight", "bias"):
            names[dst + "qkv." + kind] = [src + f"self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")]
            names[dst + "out." + kind] = [src + "self_attn.out_proj." + kind]
            names[dst + "ln1." + kind] = [src + "layer_norm1." + kind]
            names[dst + "ln2." + kind] = [src + "layer_norm2." + kind]
            names[dst + "fc1." + kind] = [src + "mlp.fc1." + kind]
            names[dst + "fc2." + kind] = [src + "mlp.fc2." + kind]
    return names


def _openclip_names(prefix: str, layers: int) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {
        "token_embedding.weight": [prefix + "token_embedding.weight"],
        "position_embedding": [prefix + "positional_embedding"],
        "final_norm.weight": [prefix + "ln_final.weight"],
        "final_norm.bias": [prefix + "ln_final.bias"],
    }
    for n in range(layers):
        src = f"{prefix}transformer.resblocks.{n}."
        dst = f"layers.{n}."
        names[dst + "qkv.weight"] = [src + "attn.in_proj_weight"]
        names[dst + "qkv.bias"] = [src + "attn.in_proj_bias"]
        for kind in ("weight", "bias"):
            names[dst + "out." + kind] = [src + "attn.out_proj." + kind]
            names[dst + "ln1." + kind] = [src + "ln_1." + kind]
            names[dst + "ln2." + kind] = [src + "ln_2." + kind]
            names[dst + "fc1." + kind] = [src + "mlp.c_fc." + kind]
            names[dst + "fc2." + kind] = [src + "mlp.c_proj." + kind]
    return names


def convert_state(
    state: dict[str, torch.Tensor],
    *,
    activation: Activation,
    dtype: torch.dtype,
    with_projection: bool,
    what: str,
) -> tuple[ClipTextConfig, dict[str, torch.Tensor], Layout]:
    """Internal state dict (converted to ``dtype``) and config for one text encoder.

    Consumes ``state`` (entries are popped as they are converted, so a fp32 file is not held
    twice). ``with_projection`` loads ``text_projection`` (required then); CLIP-L's is unused.
    """
    layout, prefix = detect_layout(state, what=what)
    if layout == "hf":
        layers = _count_layers(state, prefix + "encoder.layers.")
        names = _hf_names(prefix, layers)
    else:
        layers = _count_layers(state, prefix + "transformer.resblocks.")
        names = _openclip_names(prefix, layers)
    projection_key = _projection_key(layout, prefix, state)
    required = [key for sources in names.values() for key in sources]
    if with_projection:
        required.append(projection_key)
    require_keys(state, required, what=what)

    converted: dict[str, torch.Tensor] = {}
    for name, sources in names.items():
        parts = [state.pop(key).to(dtype) for key in sources]
        converted[name] = (torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]).contiguous()
    if with_projection:
        projection = state.pop(projection_key)
        if not projection_key.endswith(".weight"):  # OpenCLIP stores P for x @ P
            projection = projection.t()
        converted["projection.weight"] = projection.to(dtype).contiguous()

    embedding = converted["token_embedding.weight"]
    if embedding.ndim != 2:
        raise ModelLoadError(f"{what}: token embedding has shape {tuple(embedding.shape)}")
    vocab_size, hidden = embedding.shape
    if hidden % HEAD_DIM:
        raise ModelLoadError(f"{what}: hidden size {hidden} is not a multiple of {HEAD_DIM}")
    config = ClipTextConfig(
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=converted["layers.0.fc1.weight"].shape[0],
        vocab_size=vocab_size,
        max_positions=converted["position_embedding"].shape[0],
        activation=activation,
        projection_dim=converted["projection.weight"].shape[0] if with_projection else None,
    )
    return config, converted, layout


def build_model(config: ClipTextConfig, state: Mapping[str, torch.Tensor], *, what: str) -> ClipTextModel:
    """A :class:`ClipTextModel` whose parameters ARE ``state``'s tensors (shapes checked)."""
    with torch.device("meta"):
        model = ClipTextModel(config)
    expected = model.state_dict()
    require_keys(state, expected.keys(), what=what)
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"{what}: {name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)} "
                "(inconsistent sizes between tensors)"
            )
    model.load_state_dict(dict(state), strict=True, assign=True)
    return model.eval().requires_grad_(False)
