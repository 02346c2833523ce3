"""Tiled application of an image-to-image function with feathered overlap blending.

Owns :func:`tiled_map`, which the VAE uses for large images and as its out-of-memory fallback:
the input is cut into overlapping tiles, each tile is processed on its own (so peak memory
depends on the tile size, not the image size), and the results are blended with masks that
ramp linearly across the overlap, the same idea as ComfyUI's ``tiled_scale``. Unlike ComfyUI
(which averages three passes with different tile shapes), one pass is made; every tile is full
size (the last row/column is shifted back to the border rather than cut short) so GroupNorm
statistics are never taken over a sliver. Pure function; runs on the calling worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileSettings:
    """When and how to tile. Sizes are in *input* pixels (decode: latent pixels, encode: image pixels).

    Defaults follow ComfyUI's ``VAEDecodeTiled`` / ``VAEEncodeTiled`` (512 px tiles, 64 px overlap).
    """

    decode_tile: int = 64
    decode_overlap: int = 16
    encode_tile: int = 512
    encode_overlap: int = 64
    #: Cap on the working memory one call may plan for (bytes); None = what the device has free.
    max_working_bytes: int | None = None

    def __post_init__(self) -> None:
        for tile, overlap in (
            (self.decode_tile, self.decode_overlap),
            (self.encode_tile, self.encode_overlap),
        ):
            if tile < 1 or overlap < 0 or overlap >= tile:
                raise ValueError(f"tile size {tile} with overlap {overlap}: need 0 <= overlap < tile")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of full tiles covering ``size``; consecutive tiles overlap by ≥ ``overlap``."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _ramp(length: int, feather: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights: 1 inside, rising linearly over ``feather`` samples at blended edges."""
    weights = torch.ones(length)
    feather = min(feather, length // 2)
    if feather > 0:
        rise = torch.arange(1, feather + 1, dtype=torch.float32) / (feather + 1)
        if ramp_start:
            weights[:feather] = rise
        if ramp_end:
            weights[length - feather :] = rise.flip(0)
    return weights


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: float,
    out_channels: int,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Apply ``fn`` (B×C×h×w → B×out_channels×(h·scale)×(w·scale)) tile by tile over ``x``.

    Returns float32 on ``out_device``. The blend weight of each tile ramps over the overlap
    (in output pixels) on the sides that touch another tile; weights are normalised by their
    sum, so every output pixel is a convex combination of the tiles that cover it.
    """
    batch, _, height, width = x.shape
    out_h, out_w = round(height * scale), round(width * scale)
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float32, device=out_device)
    weight_sum = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=out_device)
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    feather = round(overlap * scale)
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, height), min(tile, width)
            result = fn(x[:, :, y : y + th, x0 : x0 + tw])
            oy, ox = round(y * scale), round(x0 * scale)
            rh, rw = result.shape[-2], result.shape[-1]
            mask_y = _ramp(rh, feather, ramp_start=y > 0, ramp_end=y + th < height)
            mask_x = _ramp(rw, feather, ramp_start=x0 > 0, ramp_end=x0 + tw < width)
            mask = (mask_y[:, None] * mask_x[None, :]).to(out_device)
            out[:, :, oy : oy + rh, ox : ox + rw] += result.to(device=out_device, dtype=torch.float32) * mask
            weight_sum[:, :, oy : oy + rh, ox : ox + rw] += mask
    return out / weight_sum
