"""Our VAE against diffusers.AutoencoderKL on the same tiny random weights, in every file layout."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.io import ModelLoadError
from daemon.models.vae import load_vae
from tests.helpers.tiny_models import make_tiny_checkpoint, make_tiny_vae

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    ldm = make_tiny_vae(folder / "tiny_ldm.safetensors", "ldm", seed=3)
    diffusers = make_tiny_vae(folder / "tiny_diffusers.safetensors", "diffusers", seed=3)
    return ldm, diffusers


def reference_encode_mean(reference, pixels):
    with torch.no_grad():
        return reference.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mean


def reference_decode(reference, latent):
    with torch.no_grad():
        return ((reference.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_encode_matches_diffusers_posterior_mean(tiny, layout):
    made = tiny[0] if layout == "ldm" else tiny[1]
    vae = load_vae(made.path, dtype="fp32")
    assert vae.layout == layout
    pixels = torch.rand(2, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    latent = vae.encode(pixels)
    assert latent.shape == (2, 4, 8, 6) and latent.dtype == torch.float32 and latent.device.type == "cpu"
    torch.testing.assert_close(latent, reference_encode_mean(made.reference, pixels), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_decode_matches_diffusers(tiny, layout):
    made = tiny[0] if layout == "ldm" else tiny[1]
    vae = load_vae(made.path, dtype="fp32")
    latent = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(1))
    image = vae.decode(latent)
    assert image.shape == (2, 64, 48, 3) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    torch.testing.assert_close(image, reference_decode(made.reference, latent), atol=ATOL, rtol=0)


def test_decoder_matches_diffusers_before_the_clamp(tiny):
    """The clamp hides errors in saturated pixels, so compare the raw decoder output too."""
    made = tiny[0]
    vae = load_vae(made.path, dtype="fp32")
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = vae._model.decode(latent)
    with torch.no_grad():
        theirs = made.reference.decode(latent).sample
    assert (theirs.abs() > 1).any(), "test weights should produce values outside [-1, 1]"
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_both_layouts_give_identical_results(tiny):
    ldm, diffusers = (load_vae(made.path, dtype="fp32") for made in tiny)
    pixels = torch.rand(1, 32, 40, 3, generator=torch.Generator().manual_seed(4))
    latent = torch.randn(1, 4, 5, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ldm.encode(pixels), diffusers.encode(pixels))
    assert torch.equal(ldm.decode(latent), diffusers.decode(latent))


CLIP_L_STUB = {"text_model.embeddings.token_embedding.weight": torch.zeros(4, 8)}
CLIP_G_STUB = {"token_embedding.weight": torch.zeros(4, 8)}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_vae_inside_a_full_checkpoint_equals_the_standalone_file(tiny, tmp_path, kind, dtype):
    made = tiny[0]
    clip_g = CLIP_G_STUB if kind == "sdxl" else None
    checkpoint = make_tiny_checkpoint(
        tmp_path / "model.safetensors", kind, made.ldm_state, CLIP_L_STUB, clip_g, dtype=dtype
    )
    standalone_path = tmp_path / "vae.safetensors"
    save_file({k: v.to(dtype) for k, v in made.ldm_state.items()}, str(standalone_path))
    from_checkpoint = load_vae(checkpoint, dtype="fp32")
    standalone = load_vae(standalone_path, dtype="fp32")
    assert from_checkpoint.layout == "ldm"
    for name, tensor in standalone._model.state_dict().items():
        assert torch.equal(from_checkpoint._model.state_dict()[name], tensor), name
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(from_checkpoint.decode(latent), standalone.decode(latent))


def test_checkpoint_without_a_vae_is_refused_by_name(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "novae.safetensors", "sd15", None, CLIP_L_STUB)
    with pytest.raises(ModelLoadError, match="contains no VAE"):
        load_vae(checkpoint)


def test_old_diffusers_attention_names_load_identically(tiny, tmp_path):
    """Early diffusers files call the attention tensors query/key/value/proj_attn."""
    made = tiny[1]
    renames = {
        "group_norm": "group_norm",
        "to_q": "query",
        "to_k": "key",
        "to_v": "value",
        "to_out.0": "proj_attn",
    }
    old_state = {}
    for key, tensor in made.reference.state_dict().items():
        for new, old in renames.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        old_state[key] = tensor.contiguous()
    path = tmp_path / "old_diffusers.safetensors"
    save_file(old_state, str(path))
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(
        load_vae(path, dtype="fp32").decode(latent), load_vae(made.path, dtype="fp32").decode(latent)
    )


def test_fp16_file_is_converted_to_the_requested_dtype(tmp_path):
    made = make_tiny_vae(tmp_path / "half.safetensors", "ldm", seed=8, dtype=torch.float16)
    vae = load_vae(made.path, strict_dtype=True)  # default precision: bf16
    assert vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in vae._model.parameters())
    assert vae.footprint_bytes == sum(p.numel() * 2 for p in vae._model.parameters())


def test_bf16_results_stay_close_to_fp32(tiny):
    made = tiny[0]
    fp32, bf16 = load_vae(made.path, dtype="fp32"), load_vae(made.path, dtype="bf16", strict_dtype=True)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    exact, approx = fp32.decode(latent), bf16.decode(latent)
    assert approx.dtype == torch.float32
    assert (exact - approx).abs().mean() < 0.02


def test_sampling_with_a_generator_matches_diffusers_latent_dist_sample(tiny):
    made = tiny[0]
    vae = load_vae(made.path, dtype="fp32")
    pixels = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(10))
    ours = vae.encode(pixels, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        dist = made.reference.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist
        theirs = dist.sample(generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert not torch.equal(ours, vae.encode(pixels))  # the default is the mean, not a sample


def test_sizes_not_multiple_of_8_are_centre_cropped_like_comfyui(tiny):
    vae = load_vae(tiny[0].path, dtype="fp32")
    pixels = torch.rand(1, 70, 45, 3, generator=torch.Generator().manual_seed(12))
    cropped = pixels[:, 3:67, 2:42, :]  # (70 % 8) // 2 = 3 rows, (45 % 8) // 2 = 2 columns
    assert torch.equal(vae.encode(pixels), vae.encode(cropped))


def test_alpha_channel_is_ignored(tiny):
    vae = load_vae(tiny[0].path, dtype="fp32")
    rgb = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(13))
    rgba = torch.cat([rgb, torch.rand(1, 32, 32, 1)], dim=-1)
    assert torch.equal(vae.encode(rgba), vae.encode(rgb))


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8)])
def test_phase_decomposed_upsample_equals_nearest_upsample_then_conv(dtype, atol, size):
    from daemon.models.vae import Upsample

    torch.manual_seed(0)
    module = Upsample(32).to(dtype)
    x = torch.randn(2, 32, *size, dtype=dtype)
    with torch.inference_mode():
        ours = module(x)
        reference = module.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert ours.shape == (2, 32, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(ours.float(), reference.float(), atol=atol, rtol=0.02)


def test_ldm_file_with_linear_shaped_attention_weights_loads_identically(tiny, tmp_path):
    made = tiny[0]
    state = {
        k: (
            v.reshape(v.shape[0], v.shape[1])
            if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 4
            else v
        )
        for k, v in made.ldm_state.items()
    }
    assert state["decoder.mid.attn_1.q.weight"].ndim == 2
    path = tmp_path / "flat_attention.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(14))
    assert torch.equal(
        load_vae(path, dtype="fp32").decode(latent), load_vae(made.path, dtype="fp32").decode(latent)
    )
