"""fp16 overflow → NaN is detected and recomputed in fp32; several threads share one VAE."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.vae import load_vae
from tests.helpers.tiny_models import make_tiny_vae

# Activations of conv_in reach ~1e6 with these weights: beyond fp16's 65504, fine in fp32/bf16
# (the GroupNorm right after it brings them back to unit scale), like the stock SDXL VAE.
OVERFLOW_GAIN = 1e5


@pytest.fixture(scope="module")
def overflowing_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    made = make_tiny_vae(folder / "tiny.safetensors", "ldm", seed=6, dtype=torch.float16)
    state = load_file(str(made.path))
    for part in ("encoder", "decoder"):
        state[f"{part}.conv_in.weight"] = state[f"{part}.conv_in.weight"] * OVERFLOW_GAIN
    path = folder / "overflowing.safetensors"
    save_file(state, str(path))
    return path


def test_fp16_overflow_in_decode_is_recomputed_in_fp32(overflowing_path, caplog):
    half = load_vae(overflowing_path, dtype="fp16", strict_dtype=True)
    full = load_vae(overflowing_path, dtype="fp32")
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # precondition: the fp16 model really overflows
        raw = half._model.decode(latent.half())
    assert not torch.isfinite(raw).all()

    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        image = half.decode(latent)
    assert "retrying in fp32" in caplog.text
    assert torch.isfinite(image).all()
    assert torch.equal(image, full.decode(latent))
    assert half.dtype == torch.float16  # the fp16 weights stay; only the failed call is redone


def test_fp16_overflow_in_encode_is_recomputed_in_fp32(overflowing_path, caplog):
    half = load_vae(overflowing_path, dtype="fp16", strict_dtype=True)
    full = load_vae(overflowing_path, dtype="fp32")
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        latent = half.encode(pixels)
    assert "retrying in fp32" in caplog.text
    assert torch.equal(latent, full.encode(pixels))


def test_bf16_does_not_overflow_where_fp16_does(overflowing_path, caplog):
    bf16 = load_vae(overflowing_path, dtype="bf16", strict_dtype=True)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        image = bf16.decode(latent)
    assert torch.isfinite(image).all()
    assert "retrying" not in caplog.text


def test_loading_in_fp16_warns_about_the_sdxl_vae(overflowing_path, caplog):
    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        load_vae(overflowing_path, dtype="fp16", strict_dtype=True)
    assert "fp16" in caplog.text and "SDXL" in caplog.text


def test_concurrent_calls_from_several_threads_match_sequential_results(tmp_path):
    vae = load_vae(make_tiny_vae(tmp_path / "tiny.safetensors", "ldm", seed=7).path, dtype="fp32")
    generator = torch.Generator().manual_seed(3)
    latents = [torch.randn(1, 4, 8, 8, generator=generator) for _ in range(6)]
    images = [torch.rand(1, 64, 64, 3, generator=generator) for _ in range(6)]
    expected_decoded = [vae.decode(z) for z in latents]
    expected_encoded = [vae.encode(x) for x in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(vae.decode, latents))
        encoded = list(pool.map(vae.encode, images))
    for got, want in zip(decoded + encoded, expected_decoded + expected_encoded):
        assert torch.equal(got, want)
