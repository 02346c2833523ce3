"""The full-size SD/SDXL VAE architecture from random full-size weights (slow: ~335 MB of weights)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.vae import load_vae
from tests.helpers.tiny_models import FULL_VAE_CONFIG, build_diffusers_vae, diffusers_vae_state_to_ldm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    reference = build_diffusers_vae(FULL_VAE_CONFIG, seed=0)
    path = tmp_path_factory.mktemp("vae") / "sdxl_vae.safetensors"
    save_file(diffusers_vae_state_to_ldm(reference.state_dict()), str(path))
    return path, reference


def test_full_size_vae_has_the_sdxl_architecture(full_size):
    path, _ = full_size
    vae = load_vae(path, dtype="fp32")
    assert vae.config.channels == (128, 256, 512, 512)
    assert (vae.config.encoder_blocks, vae.config.decoder_blocks) == (2, 3)
    assert vae.latent_channels == 4 and vae.downscale == 8
    assert sum(p.numel() for p in vae._model.parameters()) == 83_653_863
    assert len(vae._model.state_dict()) == 248


def test_full_size_encode_and_decode_match_diffusers(full_size):
    path, reference = full_size
    vae = load_vae(path, dtype="fp32")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 64, 64, 3, generator=generator)
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        ref_latent = reference.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean
        ref_image = ((reference.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(vae.encode(pixels), ref_latent, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vae.decode(latent), ref_image, atol=1e-4, rtol=1e-4)
