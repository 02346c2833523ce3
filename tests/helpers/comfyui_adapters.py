"""ComfyUI-shaped CLIP / VAE objects built on the daemon's own model code (test helper).

The node pack's local fallback calls the methods of ComfyUI's ``comfy.sd.CLIP`` and
``comfy.sd.VAE`` objects. These adapters expose exactly that surface over a
:class:`daemon.models.clip.TextEncoder` / :class:`daemon.models.vae.VAE`, so the fallback can be
tested outside ComfyUI with real weights. Tokenisation is deferred to ``TextEncoder.encode``
(the tokens dict just carries the text under ComfyUI's keys: "l", plus "g" for SDXL).
Called from the test's thread.
"""

from __future__ import annotations

from typing import Any


class ComfyCLIPAdapter:
    """The ComfyUI CLIP surface of newer ComfyUI (``encode_from_tokens_scheduled``)."""

    def __init__(self, encoder: Any, layer: int | None = None) -> None:
        self.encoder = encoder
        self.layer = layer
        self.calls: list[tuple[str, int | None]] = []

    def clone(self) -> ComfyCLIPAdapter:
        return type(self)(self.encoder, self.layer)

    def clip_layer(self, layer_idx: int) -> None:
        self.layer = layer_idx

    def tokenize(self, text: str) -> dict:
        # ComfyUI's tokenizers answer one entry per encoder: "l" (SD1.5) or "g" + "l" (SDXL).
        return {"g": text, "l": text} if self.encoder.kind == "sdxl" else {"l": text}

    def _encode(self, tokens: dict):
        self.calls.append((tokens["l"], self.layer))
        return self.encoder.encode(tokens["l"], clip_skip=self.layer)

    def encode_from_tokens_scheduled(
        self, tokens: dict, unprojected: bool = False, add_dict: dict | None = None, show_pbar: bool = True
    ) -> list:
        conditioning = self._encode(tokens)
        details = {"pooled_output": conditioning.pooled}
        details.update(add_dict or {})
        return [[conditioning.cond, details]]


class LegacyComfyCLIPAdapter:
    """The ComfyUI CLIP surface before ``encode_from_tokens_scheduled`` existed."""

    def __init__(self, encoder: Any, layer: int | None = None) -> None:
        self._inner = ComfyCLIPAdapter(encoder, layer)

    def clone(self) -> LegacyComfyCLIPAdapter:
        return type(self)(self._inner.encoder, self._inner.layer)

    def clip_layer(self, layer_idx: int) -> None:
        self._inner.clip_layer(layer_idx)

    def tokenize(self, text: str) -> dict:
        return self._inner.tokenize(text)

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        conditioning = self._inner._encode(tokens)
        return (conditioning.cond, conditioning.pooled) if return_pooled else conditioning.cond


class ComfyVAEAdapter:
    """The ComfyUI VAE surface (encode/decode and their tiled variants)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self.calls: list[str] = []

    def encode(self, pixels):
        self.calls.append("encode")
        return self.vae.encode(pixels)

    def decode(self, samples):
        self.calls.append("decode")
        return self.vae.decode(samples)

    def encode_tiled(self, pixels, tile_x: int = 512, tile_y: int = 512, overlap: int = 64):
        self.calls.append("encode_tiled")
        return self.vae.encode(pixels, tile=True)

    def decode_tiled(self, samples, tile_x: int = 64, tile_y: int = 64, overlap: int = 16):
        self.calls.append("decode_tiled")
        return self.vae.decode(samples, tile=True)
