"""What a full single-file SD1.5 / SDXL checkpoint contains, read from its tensor names only.

Owns: :func:`detect_checkpoint`, which tells the VAE and CLIP loaders which key prefixes hold
the VAE, CLIP-L and CLIP-G inside a ``.safetensors`` checkpoint, without reading tensor data.
Pure function; runs on whichever executor thread loads the models.

Known prefixes (the layout ComfyUI, A1111 and the Stability releases use):

* VAE: ``first_stage_model.`` (LDM key layout below it).
* SD1.5 CLIP-L: ``cond_stage_model.transformer.`` (HF transformers layout; usually followed by
  ``text_model.``, old files omit it).
* SDXL CLIP-L: ``conditioner.embedders.0.transformer.`` (HF layout).
* SDXL CLIP-G: ``conditioner.embedders.1.model.`` (OpenCLIP layout).
* SD2.x uses ``cond_stage_model.model.`` (OpenCLIP ViT-H) and is refused: not a supported kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.models.io import ModelLoadError, read_keys

VAE_PREFIX = "first_stage_model."
SD15_CLIP_L_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
UNET_PREFIX = "model.diffusion_model."

CheckpointKind = Literal["sd15", "sdxl"]


@dataclass(frozen=True)
class CheckpointInfo:
    """Which parts a checkpoint holds and under which key prefix (``None`` = part absent).

    ``path`` is the file that was inspected; ``has_unet`` is informational (the daemon never
    loads the UNet, but a checkpoint without one is unusual and worth logging).
    """

    path: Path
    kind: CheckpointKind
    vae_prefix: str | None
    clip_l_prefix: str | None
    clip_g_prefix: str | None
    has_unet: bool


def _has_prefix(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Inspect a full SD1.5/SDXL ``.safetensors`` checkpoint by its tensor names.

    Raises :class:`ModelLoadError` for pickle files, unreadable files, SD2.x checkpoints and
    files that are neither SD1.5 nor SDXL checkpoints (e.g. a standalone VAE or CLIP file).
    """
    keys = read_keys(path)
    name = Path(path).name
    has_vae = _has_prefix(keys, VAE_PREFIX)
    has_unet = _has_prefix(keys, UNET_PREFIX)

    if _has_prefix(keys, SDXL_CLIP_L_PREFIX) or _has_prefix(keys, SDXL_CLIP_G_PREFIX):
        clip_l = SDXL_CLIP_L_PREFIX if _has_prefix(keys, SDXL_CLIP_L_PREFIX) else None
        clip_g = SDXL_CLIP_G_PREFIX if _has_prefix(keys, SDXL_CLIP_G_PREFIX) else None
        if clip_l is None or clip_g is None:
            missing = SDXL_CLIP_L_PREFIX if clip_l is None else SDXL_CLIP_G_PREFIX
            raise ModelLoadError(f"{name}: SDXL checkpoint is incomplete: no tensors under {missing!r}")
        return CheckpointInfo(
            path=Path(path),
            kind="sdxl",
            vae_prefix=VAE_PREFIX if has_vae else None,
            clip_l_prefix=clip_l,
            clip_g_prefix=clip_g,
            has_unet=has_unet,
        )
    if _has_prefix(keys, SD15_CLIP_L_PREFIX):
        return CheckpointInfo(
            path=Path(path),
            kind="sd15",
            vae_prefix=VAE_PREFIX if has_vae else None,
            clip_l_prefix=SD15_CLIP_L_PREFIX,
            clip_g_prefix=None,
            has_unet=has_unet,
        )
    if _has_prefix(keys, SD2_OPENCLIP_PREFIX):
        raise ModelLoadError(
            f"{name}: looks like an SD2.x checkpoint ({SD2_OPENCLIP_PREFIX!r}); "
            "only SD1.5 and SDXL checkpoints are supported"
        )
    raise ModelLoadError(
        f"{name}: not an SD1.5/SDXL checkpoint: found no tensors under "
        f"{SD15_CLIP_L_PREFIX!r} (SD1.5) or {SDXL_CLIP_L_PREFIX!r} + {SDXL_CLIP_G_PREFIX!r} (SDXL)"
    )
