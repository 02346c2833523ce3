"""detect_checkpoint: which prefixes a full SD1.5/SDXL checkpoint holds, from names only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.checkpoint import detect_checkpoint
from daemon.models.io import ModelLoadError
from tests.helpers.tiny_models import make_tiny_checkpoint

VAE_PART = {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}
CLIP_L_PART = {"text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)}
CLIP_G_PART = {"token_embedding.weight": torch.zeros(10, 8)}


def test_sd15_checkpoint_reports_vae_and_clip_l_prefixes(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "sd15.safetensors", "sd15", VAE_PART, CLIP_L_PART)
    info = detect_checkpoint(path)
    assert info.kind == "sd15"
    assert info.vae_prefix == "first_stage_model."
    assert info.clip_l_prefix == "cond_stage_model.transformer."
    assert info.clip_g_prefix is None
    assert info.has_unet


def test_sdxl_checkpoint_reports_both_clip_prefixes(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "xl.safetensors", "sdxl", VAE_PART, CLIP_L_PART, CLIP_G_PART)
    info = detect_checkpoint(path)
    assert info.kind == "sdxl"
    assert info.vae_prefix == "first_stage_model."
    assert info.clip_l_prefix == "conditioner.embedders.0.transformer."
    assert info.clip_g_prefix == "conditioner.embedders.1.model."


def test_checkpoint_without_vae_has_no_vae_prefix(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "novae.safetensors", "sd15", None, CLIP_L_PART)
    assert detect_checkpoint(path).vae_prefix is None


def test_sdxl_checkpoint_missing_clip_g_is_refused(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "half.safetensors", "sdxl", VAE_PART, CLIP_L_PART)
    with pytest.raises(ModelLoadError, match="conditioner.embedders.1.model."):
        detect_checkpoint(path)


def test_sd2_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="SD2"):
        detect_checkpoint(path)


def test_standalone_vae_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file(VAE_PART, str(path))
    with pytest.raises(ModelLoadError, match="not an SD1.5/SDXL checkpoint"):
        detect_checkpoint(path)


def test_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        detect_checkpoint(path)
