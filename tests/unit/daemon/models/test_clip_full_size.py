"""Full-size CLIP-L and CLIP-G from random weights: they load and run one forward on CPU (slow)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.clip import load_text_encoder
from tests.helpers.tiny_models import FULL_CLIP, clip_state_in_layout, random_clip_state

pytestmark = pytest.mark.slow


def test_full_size_sdxl_text_encoder_loads_and_encodes(tmp_path):
    l_path = tmp_path / "clip_l.safetensors"
    g_path = tmp_path / "clip_g.safetensors"
    save_file(random_clip_state("l", **FULL_CLIP["l"], dtype=torch.float16, seed=1), str(l_path))
    g_state = random_clip_state("g", **FULL_CLIP["g"], dtype=torch.bfloat16, seed=2)
    save_file(clip_state_in_layout(g_state, "openclip"), str(g_path))
    del g_state

    encoder = load_text_encoder(clip_l=l_path, clip_g=g_path, dtype="bf16")
    l_model, g_model = (part.model for part in encoder.parts)
    assert (l_model.config.hidden_size, l_model.config.num_layers, l_model.config.num_heads) == (768, 12, 12)
    assert (g_model.config.hidden_size, g_model.config.num_layers, g_model.config.num_heads) == (1280, 32, 20)
    assert g_model.config.intermediate_size == 5120 and g_model.config.projection_dim == 1280
    # 123,060,480 (L without projection) + 694,659,840 (G with projection) parameters; bf16, or
    # fp32 on a CPU without native bf16 (see load_text_encoder).
    bytes_per_param = torch.empty(0, dtype=encoder.dtype).element_size()
    assert encoder.footprint_bytes == bytes_per_param * (123_060_480 + 694_659_840)

    out = encoder.encode("a photo of an astronaut riding a (horse:1.2) on the moon")
    assert out.cond.shape == (1, 77, 2048) and out.pooled.shape == (1, 1280)
    assert torch.isfinite(out.cond).all() and torch.isfinite(out.pooled).all()


def test_full_size_sd15_text_encoder_loads_and_encodes(tmp_path):
    path = tmp_path / "clip_l.safetensors"
    save_file(random_clip_state("l", **FULL_CLIP["l"], seed=3), str(path))
    encoder = load_text_encoder(clip_l=path, dtype="fp32")
    out = encoder.encode("a cat", clip_skip=-2)
    assert out.cond.shape == (1, 77, 768) and out.pooled.shape == (1, 768)
    assert torch.isfinite(out.cond).all()
