"""ComfyUI value ↔ daemon array conversion, and CONDITIONING built the way ComfyUI builds it.

Owns the tensor conventions at the pack's edge: IMAGE is a torch B×H×W×C float tensor in
[0, 1]; LATENT is ``{"samples": B×C×h×w}`` (unscaled); CONDITIONING is
``[[cond, {"pooled_output": pooled, ...}]]``. The daemon client speaks numpy float32 in the
same layouts. torch is imported lazily so importing the pack (and the installer) stays cheap.
Pure functions, called on ComfyUI's prompt-worker thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Feature width of SDXL's cond (CLIP-L 768 + CLIP-G 1280), used only when the daemon's
#: answer does not say which kind of model produced it (and for the local fallback).
SDXL_COND_WIDTH = 2048

#: The keys CLIPTextEncodeSDXL adds next to "pooled_output" (ComfyUI
#: comfy_extras/nodes_clip_sdxl.py); the SDXL UNet builds its ADM vector from them.
SDXL_SIZE_KEYS = ("width", "height", "crop_w", "crop_h", "target_width", "target_height")

TILING_OPTIONS = ("auto", "on", "off")


def tile_flag(tiling: str) -> bool | None:
    """The node's tiling combo as the daemon's ``tile`` option (None = automatic)."""
    try:
        return {"auto": None, "on": True, "off": False}[tiling]
    except KeyError:
        raise ValueError(f"tiling must be one of {TILING_OPTIONS}, got {tiling!r}") from None


def image_to_array(pixels: Any) -> np.ndarray:
    """IMAGE tensor (any device/dtype, C >= 3) → float32 C-order numpy B×H×W×3."""
    if getattr(pixels, "ndim", None) != 4 or pixels.shape[-1] < 3:
        raise ValueError(
            f"expected an IMAGE tensor B×H×W×C with C >= 3, got shape {tuple(getattr(pixels, 'shape', ()))}"
        )
    return _to_array(pixels[:, :, :, :3])


def latent_to_array(latent: Any) -> np.ndarray:
    """LATENT dict → float32 C-order numpy B×C×h×w of its ``samples``."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("expected a LATENT (a dict with 'samples')")
    samples = latent["samples"]
    if getattr(samples, "ndim", None) != 4:
        raise ValueError(f"expected LATENT samples B×C×h×w, got shape {tuple(getattr(samples, 'shape', ()))}")
    return _to_array(samples)


def _to_array(tensor: Any) -> np.ndarray:
    import torch

    cpu = tensor.detach().to(device="cpu", dtype=torch.float32)
    return np.ascontiguousarray(cpu.numpy())


def array_to_tensor(array: np.ndarray | None) -> Any:
    """numpy from the client → float32 CPU torch tensor that owns its memory.

    The copy is skipped when the array already owns writable float32 C-order memory; arrays
    that view a receive buffer or shared memory are copied, because torch would alias them.
    """
    if array is None:
        return None
    import torch

    owned = np.require(array, dtype=np.float32, requirements=("C", "W", "O"))
    return torch.from_numpy(owned)


def is_sdxl(kind: str | None, cond: Any) -> bool:
    """SDXL or not: the daemon's ``kind`` when it sent one, else the cond's feature width."""
    if kind:
        return kind == "sdxl"
    return int(cond.shape[-1]) == SDXL_COND_WIDTH


def sdxl_size_conditioning(
    width: int, height: int, crop_w: int, crop_h: int, target_width: int, target_height: int
) -> dict[str, int]:
    values = (width, height, crop_w, crop_h, target_width, target_height)
    return {key: int(value) for key, value in zip(SDXL_SIZE_KEYS, values)}


def build_conditioning(cond: Any, pooled: Any, extra: dict[str, Any] | None = None) -> list:
    """``[[cond, {"pooled_output": pooled, **extra}]]`` exactly as CLIPTextEncode(SDXL) returns."""
    details: dict[str, Any] = {"pooled_output": pooled}
    if extra:
        details.update(extra)
    return [[cond, details]]
