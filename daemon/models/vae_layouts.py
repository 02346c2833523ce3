"""VAE state-dict layouts: recognise LDM vs diffusers files, convert to LDM, read the architecture.

Owns: the diffusers → LDM key rewrite (the daemon's VAE modules use LDM names, so
``sdxl_vae.safetensors`` and a checkpoint's ``first_stage_model.*`` load unchanged), and
:class:`VAEConfig`, the architecture read from tensor shapes so the same code builds the full
SD/SDXL VAE and tiny test models. Pure functions; run on the loading executor thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from daemon.models.io import ModelLoadError, require_keys

LDM = "ldm"
DIFFUSERS = "diffusers"

#: GroupNorm group count of every SD/SDXL VAE; not recoverable from tensor shapes.
NORM_GROUPS = 32

# Keys whose presence identifies a layout (any one is enough).
_DIFFUSERS_MARKERS = ("decoder.up_blocks.", "encoder.down_blocks.", "encoder.mid_block.")
_LDM_MARKERS = ("decoder.up.", "encoder.down.", "encoder.mid.")

# Tensors the architecture is read from; their absence makes a file unusable.
ANCHOR_KEYS = (
    "encoder.conv_in.weight",
    "encoder.conv_out.weight",
    "decoder.conv_in.weight",
    "decoder.conv_out.weight",
    "encoder.down.0.block.0.conv1.weight",
    "decoder.up.0.block.0.conv1.weight",
)


def detect_layout(keys: list[str] | set[str]) -> str:
    """``"ldm"`` or ``"diffusers"`` from key names; ModelLoadError when it is neither."""
    if any(k.startswith(_DIFFUSERS_MARKERS) for k in keys):
        return DIFFUSERS
    if any(k.startswith(_LDM_MARKERS) for k in keys):
        return LDM
    sample = ", ".join(sorted(keys)[:5]) or "no tensors"
    raise ModelLoadError(
        "not a VAE file: expected LDM keys (encoder.down.N.block.M…, decoder.up.N…) or diffusers "
        f"keys (encoder.down_blocks…, decoder.up_blocks…); found {sample}"
    )


_ATTN_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
_RE_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)$")
_RE_UP = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$")
_RE_MID_RES = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)$")
_RE_MID_ATTN = re.compile(
    r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.(weight|bias)$"
)


def _rename_diffusers_key(key: str, num_up_blocks: int) -> str:
    if m := _RE_DOWN.match(key):
        level, kind, index, rest = m.groups()
        if kind == "resnets":
            return f"encoder.down.{level}.block.{index}.{_resnet_leaf(rest)}"
        return f"encoder.down.{level}.downsample.{rest}"
    if m := _RE_UP.match(key):
        level, kind, index, rest = m.groups()
        # diffusers counts decoder levels from the bottleneck up; LDM from full resolution down.
        ldm_level = num_up_blocks - 1 - int(level)
        if kind == "resnets":
            return f"decoder.up.{ldm_level}.block.{index}.{_resnet_leaf(rest)}"
        return f"decoder.up.{ldm_level}.upsample.{rest}"
    if m := _RE_MID_RES.match(key):
        part, index, rest = m.groups()
        return f"{part}.mid.block_{int(index) + 1}.{_resnet_leaf(rest)}"
    if m := _RE_MID_ATTN.match(key):
        part, name, leaf = m.groups()
        return f"{part}.mid.attn_1.{_ATTN_NAMES[name]}.{leaf}"
    for part in ("encoder", "decoder"):
        if key.startswith(f"{part}.conv_norm_out."):
            return f"{part}.norm_out." + key[len(f"{part}.conv_norm_out.") :]
    return key  # conv_in, conv_out, quant_conv, post_quant_conv: same names; unknowns pass through


def _resnet_leaf(rest: str) -> str:
    return "nin_shortcut." + rest[len("conv_shortcut.") :] if rest.startswith("conv_shortcut.") else rest


def diffusers_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderKL state dict to LDM keys; Linear attention → 1×1 conv shape.

    Keys this function does not know are kept as they are, so the strict load afterwards names
    them as unexpected instead of silently dropping them.
    """
    up_levels = {int(m.group(1)) for k in state if (m := _RE_UP.match(k))}
    num_up_blocks = max(up_levels) + 1 if up_levels else 0
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new_key = _rename_diffusers_key(key, num_up_blocks)
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1], 1, 1)
        if new_key in out:
            raise ModelLoadError(f"VAE file has two tensors for {new_key} (old and new attention names?)")
        out[new_key] = tensor
    return out


def to_ldm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Return (state in LDM layout, the layout the file was in)."""
    layout = detect_layout(set(state))
    if layout == DIFFUSERS:
        return diffusers_to_ldm(state), layout
    # Some converted checkpoints keep Linear-shaped (2-D) attention weights under LDM names.
    fixed = {}
    for key, tensor in state.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1], 1, 1)
        fixed[key] = tensor
    return fixed, layout


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL architecture, read from LDM-layout tensor shapes.

    ``channels[i]`` is the width of level i (full resolution first). The encoder has
    ``encoder_blocks`` resnets per level, the decoder ``decoder_blocks`` (SD: 2 and 3).
    """

    in_channels: int
    out_channels: int
    channels: tuple[int, ...]
    encoder_blocks: int
    decoder_blocks: int
    z_channels: int  # what the decoder's conv_in takes / half of what the encoder emits
    latent_channels: int  # embed_dim: the latent the caller sees (after quant_conv)
    has_quant_conv: bool
    has_post_quant_conv: bool
    mid_attention: bool
    norm_groups: int = NORM_GROUPS

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channels) - 1)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    if found != set(range(len(found))):
        raise ModelLoadError(f"VAE file has a gap in {pattern!r}: indices {sorted(found)}")
    return len(found)


def read_config(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Derive the architecture from an LDM-layout state dict (raises naming missing anchors)."""
    require_keys(state, ANCHOR_KEYS, what="VAE")
    levels = _count(state, r"^encoder\.down\.(\d+)\.block\.0\.conv1\.weight$")
    channels = tuple(
        int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0])
        if f"encoder.down.{i}.block.0.conv2.weight" in state
        else -1
        for i in range(levels)
    )
    if -1 in channels:
        missing = [f"encoder.down.{i}.block.0.conv2.weight" for i, c in enumerate(channels) if c == -1]
        require_keys(state, missing, what="VAE")
    encoder_blocks = _count(state, r"^encoder\.down\.0\.block\.(\d+)\.conv1\.weight$")
    decoder_blocks = _count(state, r"^decoder\.up\.0\.block\.(\d+)\.conv1\.weight$")
    z_channels = int(state["decoder.conv_in.weight"].shape[1])
    has_post_quant = "post_quant_conv.weight" in state
    latent_channels = int(state["post_quant_conv.weight"].shape[1]) if has_post_quant else z_channels
    config = VAEConfig(
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        channels=channels,
        encoder_blocks=encoder_blocks,
        decoder_blocks=decoder_blocks,
        z_channels=z_channels,
        latent_channels=latent_channels,
        has_quant_conv="quant_conv.weight" in state,
        has_post_quant_conv=has_post_quant,
        mid_attention="encoder.mid.attn_1.q.weight" in state or "decoder.mid.attn_1.q.weight" in state,
    )
    bad = sorted({c for c in channels if c % NORM_GROUPS})
    if bad:
        raise ModelLoadError(
            f"VAE channel widths {bad} are not multiples of {NORM_GROUPS} GroupNorm groups; "
            "not an SD-family AutoencoderKL"
        )
    return config
