"""Local encode/decode with ComfyUI's own CLIP / VAE objects, used by ``mode="auto"``.

Owns the fallback path only: it calls the methods ComfyUI's built-in CLIPTextEncode,
CLIPSetLastLayer, VAEEncode(Tiled) and VAEDecode(Tiled) call, on the objects wired into the
node's optional ``clip`` / ``vae`` input, so the result is what those nodes would give.
Nothing from ``comfy.*`` is imported: the objects bring their own code. Runs on ComfyUI's
prompt-worker thread.
"""

from __future__ import annotations

from typing import Any

from .conversion import build_conditioning, is_sdxl


def encode_text_locally(clip: Any, text: str, *, clip_skip: int, sdxl_size: dict[str, int]) -> list:
    """CONDITIONING from a ComfyUI CLIP object (newer and older CLIP APIs both work)."""
    if clip_skip:
        # What CLIPSetLastLayer does; clone() so the caller's CLIP keeps its own setting.
        clip = clip.clone()
        clip.clip_layer(clip_skip)
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):  # ComfyUI since late 2024
        conditioning = clip.encode_from_tokens_scheduled(tokens)
    else:
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        conditioning = build_conditioning(cond, pooled)
    if not conditioning or not (_sdxl_tokens(tokens) or is_sdxl(None, conditioning[0][0])):
        return conditioning
    return [[cond, {**details, **sdxl_size}] for cond, details in conditioning]


def _sdxl_tokens(tokens: Any) -> bool:
    """ComfyUI's SDXL tokenizer answers one token list per encoder: keys "g" and "l"."""
    return isinstance(tokens, dict) and "g" in tokens and "l" in tokens


def encode_pixels_locally(vae: Any, pixels: Any, *, tiling: str) -> dict:
    """LATENT from a ComfyUI VAE object, as VAEEncode / VAEEncodeTiled would."""
    rgb = pixels[:, :, :, :3]
    if tiling == "on" and hasattr(vae, "encode_tiled"):
        return {"samples": vae.encode_tiled(rgb)}
    # "auto" and "off": ComfyUI's VAE.encode already tiles by itself after an out-of-memory.
    return {"samples": vae.encode(rgb)}


def decode_latent_locally(vae: Any, latent: dict, *, tiling: str) -> Any:
    """IMAGE from a ComfyUI VAE object, as VAEDecode / VAEDecodeTiled would."""
    samples = latent["samples"]
    if tiling == "on" and hasattr(vae, "decode_tiled"):
        images = vae.decode_tiled(samples)
    else:
        images = vae.decode(samples)
    if images.ndim == 5:  # video VAEs give B×T×H×W×C; ComfyUI flattens the frames
        images = images.reshape(-1, *images.shape[-3:])
    return images
