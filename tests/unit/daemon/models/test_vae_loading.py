"""load_vae refuses bad files with clear errors, honours dtype/device, and rejects bad inputs."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.io import ModelLoadError, cpu_has_native
from daemon.models.vae import VAEInputError, load_vae
from tests.helpers.tiny_models import make_tiny_vae


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny.safetensors", "ldm", seed=1).path


@pytest.fixture(scope="module")
def vae(tiny_path):
    return load_vae(tiny_path, dtype="fp32")


def test_missing_tensors_are_named_in_the_error(tiny_path, tmp_path):
    state = load_file(str(tiny_path))
    del state["decoder.up.1.block.0.conv2.weight"]
    del state["encoder.mid.attn_1.k.bias"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as info:
        load_vae(path)
    assert "decoder.up.1.block.0.conv2.weight" in str(info.value)
    assert "encoder.mid.attn_1.k.bias" in str(info.value)


def test_file_without_architecture_anchors_names_them(tmp_path):
    path = tmp_path / "stub.safetensors"
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(32, 32, 3, 3)}, str(path))
    with pytest.raises(ModelLoadError, match="decoder.conv_in.weight"):
        load_vae(path)


def test_a_file_that_is_not_a_vae_is_refused(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 8)}, str(path))
    with pytest.raises(ModelLoadError, match="not a VAE"):
        load_vae(path)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_are_refused_without_being_read(tmp_path, suffix):
    path = tmp_path / f"vae{suffix}"
    path.write_bytes(b"\x80\x04\x95 this would run code if unpickled")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_vae(path)


def test_garbage_safetensors_is_a_load_error(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"definitely not a safetensors header")
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        load_vae(path)


def test_wrong_tensor_shape_is_reported(tiny_path, tmp_path):
    state = load_file(str(tiny_path))
    state["decoder.conv_out.bias"] = torch.zeros(7)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="decoder.conv_out.bias"):
        load_vae(path)


def test_training_leftovers_are_ignored_and_strangers_are_logged(tiny_path, tmp_path, caplog):
    state = load_file(str(tiny_path))
    state["loss.discriminator.main.0.weight"] = torch.zeros(2)
    state["decoder.something_new.weight"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        vae = load_vae(path, dtype="fp32")
    assert "decoder.something_new.weight" in caplog.text
    assert "loss.discriminator" not in caplog.text
    assert vae.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 16, 16, 3)


def test_unknown_precision_and_missing_device_are_load_errors(tiny_path):
    with pytest.raises(ModelLoadError, match="precision"):
        load_vae(tiny_path, dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="cuda"):
            load_vae(tiny_path, device="cuda:1")


@pytest.mark.expect_log_warnings
def test_weights_are_on_the_requested_device_and_dtype(tiny_path):
    vae = load_vae(tiny_path, device="cpu", dtype="fp16", strict_dtype=True)
    assert vae.device == torch.device("cpu") and vae.dtype == torch.float16
    assert {p.device.type for p in vae._model.parameters()} == {"cpu"}
    assert {p.dtype for p in vae._model.parameters()} == {torch.float16}
    assert vae.latent_channels == 4 and vae.downscale == 8


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_without_native_cpu_kernels_runs_in_fp32(tiny_path, caplog, precision, dtype):
    with caplog.at_level(logging.WARNING, logger="daemon.models.vae"):
        vae = load_vae(tiny_path, device="cpu", dtype=precision)
    if cpu_has_native(dtype):
        assert vae.dtype == dtype
    else:
        assert vae.dtype == torch.float32
        assert "no native" in caplog.text
    assert {p.dtype for p in vae._model.parameters()} == {vae.dtype}


@pytest.mark.parametrize(
    "pixels, message",
    [
        (torch.rand(32, 32, 3), "4-D"),
        (torch.randint(0, 255, (1, 32, 32, 3), dtype=torch.uint8), "float"),
        (torch.rand(1, 32, 32, 2), "channels"),
        (torch.rand(1, 4, 32, 3), "smaller"),
        (torch.rand(0, 32, 32, 3), "empty"),
    ],
)
def test_bad_images_raise_a_value_error_naming_the_problem(vae, pixels, message):
    with pytest.raises(VAEInputError, match=message):
        vae.encode(pixels)


@pytest.mark.parametrize(
    "latent, message",
    [
        (torch.randn(4, 8, 8), "4-D"),
        (torch.ones(1, 4, 8, 8, dtype=torch.int64), "float"),
        (torch.randn(1, 16, 8, 8), "16 channels"),
        (torch.randn(1, 4, 0, 8), "empty"),
    ],
)
def test_bad_latents_raise_a_value_error_naming_the_problem(vae, latent, message):
    with pytest.raises(VAEInputError, match=message):
        vae.decode(latent)


def test_non_tensor_input_is_a_value_error(vae):
    with pytest.raises(ValueError, match="torch.Tensor"):
        vae.decode([[0.0]])


def test_outputs_are_ordinary_tensors_callers_may_modify(vae):
    image = vae.decode(torch.zeros(1, 4, 2, 2))
    image.mul_(2)  # would raise for an inference-mode tensor
    assert not image.is_inference()
