"""The CLIP text transformer (CLIP-L and OpenCLIP bigG share it; sizes come from the weights).

Owns the torch module only: token + learned position embeddings, pre-LayerNorm blocks with a
causal mask, ``final_layer_norm``, optional ``text_projection``, and reading out any layer's
hidden state the way ComfyUI does (layer index, with or without the final LayerNorm) plus the
pooled vector at the first end-of-text token. q/k/v are stored as one fused projection (the
OpenCLIP ``in_proj`` layout, loaded without a copy) but in fp32 applied as three matmuls on its
row slices, which is faster on CPU (measured there only; GPUs keep the fused matmul); attention is PyTorch's fused scaled-dot-product kernel.

Read-only after loading; ``forward`` allocates nothing shared, so pool threads call one
instance concurrently (under ``torch.inference_mode()``, which the caller sets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from daemon.models.tokenizer import END_TOKEN

HEAD_DIM = 64
Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class ClipTextConfig:
    """Architecture of one text encoder, read from tensor shapes (see ``clip_layouts``)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    activation: Activation
    projection_dim: int | None = None
    layer_norm_eps: float = 1e-5

    @property
    def num_heads(self) -> int:
        # CLIP-L (768) and bigG (1280) both use 64-wide heads.
        return self.hidden_size // HEAD_DIM


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation: x·sigmoid(1.702·x)."""
    return x * torch.sigmoid(1.702 * x)


class ClipBlock(nn.Module):
    """One pre-LN transformer block: ``x += attn(ln1(x))``, ``x += mlp(ln2(x))``."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_heads
        self.activation = quick_gelu if config.activation == "quick_gelu" else F.gelu
        self.ln1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(width, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        normed = self.ln1(x)
        heads = (batch, length, self.num_heads, width // self.num_heads)
        if self.qkv.weight.dtype == torch.float32 and x.device.type == "cpu":
            # Three matmuls on row slices of the fused weight (contiguous views, no copy): in
            # fp32 on CPU three W-wide GEMMs beat one 3W-wide GEMM by ~3-9 % (measured, 2
            # threads), which was most of our gap to transformers' separate q/k/v
            # projections; outputs were bit-identical in that A/B. In bf16 the fused GEMM is as fast.
            q, k, v = (
                F.linear(normed, weight, bias).view(heads).transpose(1, 2)
                for weight, bias in zip(self.qkv.weight.chunk(3), self.qkv.bias.chunk(3), strict=True)
            )
        else:
            qkv = self.qkv(normed).view(batch, length, 3, *heads[2:])
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc2(self.activation(self.fc1(self.ln2(x))))


@dataclass(frozen=True)
class EmbeddingOverride:
    """Put ``vector`` at ``(row, position)`` of the token embeddings (textual inversion)."""

    row: int
    position: int
    vector: torch.Tensor


class ClipTextModel(nn.Module):
    """CLIP text transformer with ComfyUI's ways of reading it out."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(config.max_positions, config.hidden_size))
        self.layers = nn.ModuleList(ClipBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = (
            nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            if config.projection_dim is not None
            else None
        )

    def embed(self, tokens: torch.Tensor, overrides: Sequence[EmbeddingOverride] = ()) -> torch.Tensor:
        """Token + position embeddings, with textual-inversion vectors put in their slots."""
        x = self.token_embedding(tokens)
        if overrides:
            x = x.clone()
            for item in overrides:
                x[item.row, item.position] = item.vector.to(device=x.device, dtype=x.dtype)
        return x + self.position_embedding[: tokens.shape[1]]

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        layer_index: int | None = None,
        norm_hidden: bool = True,
        pooled: Literal["none", "raw", "projected"] = "none",
        overrides: Sequence[EmbeddingOverride] = (),
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states ``[B, T, D]`` of one layer, and the pooled vector if asked.

        ``layer_index=None``: the last layer with ``final_layer_norm`` (ComfyUI "last").
        Otherwise the output of block ``layer_index`` (0-based), final-normed iff
        ``norm_hidden`` (ComfyUI "hidden" + ``layer_norm_hidden_state``). ``pooled`` is always
        the last layer, final-normed, at the first end-of-text token; "projected" also applies
        ``text_projection``. Layers after the requested one are skipped when no pooled is needed.
        """
        num_layers = len(self.layers)
        if layer_index is not None and not 0 <= layer_index < num_layers:
            raise ValueError(f"layer_index {layer_index} outside 0..{num_layers - 1}")
        if pooled == "projected" and self.projection is None:
            raise ValueError("this text encoder has no text_projection")
        x = self.embed(tokens, overrides)
        stop = num_layers if (pooled != "none" or layer_index is None) else layer_index + 1
        hidden = None
        for index in range(stop):
            x = self.layers[index](x)
            if index == layer_index:
                hidden = self.final_norm(x) if norm_hidden else x
        if layer_index is None:
            hidden = self.final_norm(x)
        pooled_out = None
        if pooled != "none":
            end_positions = (tokens == END_TOKEN).int().argmax(dim=-1)
            rows = torch.arange(tokens.shape[0], device=x.device)
            pooled_out = self.final_norm(x[rows, end_positions])
            if pooled == "projected":
                pooled_out = self.projection(pooled_out)
        assert hidden is not None
        return hidden, pooled_out
