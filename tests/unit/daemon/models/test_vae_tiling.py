"""Tiled encode/decode: blending is exact for local functions, close to untiled for a real VAE,
chosen automatically for inputs over the memory budget and after an out-of-memory error."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from daemon.models.tiling import TileSettings, tile_starts, tiled_map
from daemon.models.vae import is_out_of_memory, load_vae
from tests.helpers.tiny_models import make_tiny_vae

SMALL_TILES = TileSettings(decode_tile=24, decode_overlap=8, encode_tile=192, encode_overlap=64)


@pytest.fixture(scope="module")
def local_vae_path(tmp_path_factory):
    """A tiny VAE whose mid-block attention adds nothing (proj_out = 0), so every output pixel
    depends on a bounded neighbourhood — the property that makes tiling nearly lossless for
    trained VAEs. Random weights otherwise."""
    folder = tmp_path_factory.mktemp("vae")
    made = make_tiny_vae(folder / "tiny.safetensors", "ldm", seed=5)
    state = load_file(str(made.path))
    for part in ("encoder", "decoder"):
        state[f"{part}.mid.attn_1.proj_out.weight"].zero_()
        state[f"{part}.mid.attn_1.proj_out.bias"].zero_()
    path = folder / "local.safetensors"
    save_file(state, str(path))
    return path


def test_tile_starts_cover_the_input_with_full_tiles():
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    starts = tile_starts(50, 16, 4)
    assert starts[-1] + 16 == 50 and all(b - a <= 12 for a, b in zip(starts, starts[1:]))


def test_tiled_map_is_exact_for_a_pointwise_function():
    x = torch.randn(2, 3, 37, 29)
    out = tiled_map(lambda t: torch.tanh(t) * 3, x, tile=8, overlap=3, scale=1.0, out_channels=3)
    torch.testing.assert_close(out, torch.tanh(x) * 3)


def test_tiled_map_is_exact_for_an_upscaling_function():
    x = torch.randn(1, 2, 13, 21)
    upscale = lambda t: F.interpolate(t, scale_factor=8.0, mode="nearest")  # noqa: E731
    out = tiled_map(upscale, x, tile=6, overlap=2, scale=8.0, out_channels=2)
    torch.testing.assert_close(out, upscale(x))


def test_tiled_decode_is_close_to_untiled(local_vae_path):
    vae = load_vae(local_vae_path, dtype="fp32", tiling=SMALL_TILES)
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 40, 32, generator=generator)
    untiled, tiled = vae.decode(latent, tile=False), vae.decode(latent, tile=True)
    unrelated = vae.decode(torch.randn(1, 4, 40, 32, generator=generator), tile=False)
    assert tiled.shape == untiled.shape == (1, 320, 256, 3)
    seam_error = (tiled - untiled).abs().mean()
    assert seam_error < 0.25 * (unrelated - untiled).abs().mean()


def test_tiled_encode_is_close_to_untiled(local_vae_path):
    vae = load_vae(local_vae_path, dtype="fp32", tiling=SMALL_TILES)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 320, 256, 3, generator=generator)
    untiled, tiled = vae.encode(pixels, tile=False), vae.encode(pixels, tile=True)
    unrelated = vae.encode(torch.rand(1, 320, 256, 3, generator=generator), tile=False)
    assert tiled.shape == untiled.shape == (1, 4, 40, 32)
    assert (tiled - untiled).abs().mean() < 0.25 * (unrelated - untiled).abs().mean()


def test_inputs_over_the_memory_budget_are_tiled_automatically(local_vae_path):
    tight = TileSettings(decode_tile=8, decode_overlap=4, max_working_bytes=1)
    vae = load_vae(local_vae_path, dtype="fp32", tiling=tight)
    latent = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(2))
    auto = vae.decode(latent)
    assert torch.equal(auto, vae.decode(latent, tile=True))
    assert not torch.equal(auto, vae.decode(latent, tile=False))


def test_batches_are_split_to_fit_the_budget_without_changing_results(local_vae_path):
    roomy = load_vae(local_vae_path, dtype="fp32")
    # Room for one 8×8 latent at a time (≈2178·64·64·4 bytes) but not two.
    one_at_a_time = load_vae(local_vae_path, dtype="fp32", tiling=TileSettings(max_working_bytes=40_000_000))
    latent = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    batch_sizes: list[int] = []
    handle = one_at_a_time._model.decoder.register_forward_pre_hook(
        lambda module, args: batch_sizes.append(args[0].shape[0])
    )
    try:
        torch.testing.assert_close(one_at_a_time.decode(latent), roomy.decode(latent))
    finally:
        handle.remove()
    assert batch_sizes == [1, 1, 1]


class OutOfMemoryAboveTileSize:
    """Forward pre-hook on the real decoder: raises the allocator's error for inputs larger than
    a tile, as a GPU with little free memory would. Counts how often it fired."""

    def __init__(self, limit: int, error: Exception):
        self.limit, self.error, self.fired = limit, error, 0

    def __call__(self, module, args):
        if max(args[0].shape[-2:]) > self.limit:
            self.fired += 1
            raise self.error


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ],
)
def test_out_of_memory_falls_back_to_tiles(local_vae_path, caplog, error):
    vae = load_vae(local_vae_path, dtype="fp32", tiling=TileSettings(decode_tile=8, decode_overlap=4))
    latent = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(4))
    expected = vae.decode(latent, tile=True)
    hook = OutOfMemoryAboveTileSize(limit=8, error=error)
    handle = vae._model.decoder.register_forward_pre_hook(hook)
    try:
        with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
            result = vae.decode(latent)
        assert hook.fired == 1
        assert "out of memory" in caplog.text
        assert torch.equal(result, expected)
        with pytest.raises(type(error)):
            vae.decode(latent, tile=False)  # forced untiled: the error reaches the caller
    finally:
        handle.remove()


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_bad_tile_settings_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        TileSettings(decode_tile=8, decode_overlap=8)


def test_encode_tiles_not_aligned_to_the_latent_grid_are_aligned(local_vae_path):
    odd = load_vae(local_vae_path, dtype="fp32", tiling=TileSettings(encode_tile=100, encode_overlap=30))
    aligned = load_vae(local_vae_path, dtype="fp32", tiling=TileSettings(encode_tile=96, encode_overlap=24))
    pixels = torch.rand(1, 160, 136, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(odd.encode(pixels, tile=True), aligned.encode(pixels, tile=True))
