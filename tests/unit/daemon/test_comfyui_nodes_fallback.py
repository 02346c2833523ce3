"""Daemon down: `daemon` mode fails naming host:port, `auto` mode falls back to the local input.

The local CLIP/VAE objects are ComfyUI-shaped adapters over the daemon's own model code with
tiny random weights, so the fallback results are checked against the model called directly.
"Down" is a loopback port nobody listens on (bound, then closed), so connects are refused.
"""

from __future__ import annotations

import logging
import socket

import pytest
import torch

from daemon.comfyui_nodes import nodes
from daemon.comfyui_nodes.connection import DaemonConnections, LunaDaemonNodeError
from daemon.models.clip import load_text_encoder
from daemon.models.vae import load_vae
from tests.helpers.comfyui_adapters import (
    ComfyCLIPAdapter,
    ComfyVAEAdapter,
    LegacyComfyCLIPAdapter,
)
from tests.helpers.comfyui_standin import run_node
from tests.helpers.tiny_models import make_tiny_clip, make_tiny_vae

SIZE_KEYS = {
    "width": 832,
    "height": 1216,
    "crop_w": 8,
    "crop_h": 16,
    "target_width": 896,
    "target_height": 1152,
}


@pytest.fixture
def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def private_connections(monkeypatch):
    """Each test gets its own client cache, closed afterwards (no socket outlives a test)."""
    connections = DaemonConnections()
    monkeypatch.setattr(nodes._DaemonNode, "connections", connections)
    yield connections
    connections.close_all()


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "tiny_vae.safetensors"
    make_tiny_vae(path)
    return load_vae(path, dtype="fp32")


@pytest.fixture(scope="module")
def text_encoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    clip_l = make_tiny_clip(folder / "clip_l.safetensors", "l", seed=21).path
    clip_g = make_tiny_clip(folder / "clip_g.safetensors", "g", "openclip", seed=22).path
    return {
        "sd15": load_text_encoder(clip_l=clip_l, dtype="fp32"),
        "sdxl": load_text_encoder(clip_l=clip_l, clip_g=clip_g, dtype="fp32"),
    }


def _pixels(batch=1, height=32, width=48, channels=4):
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------- daemon mode


@pytest.mark.parametrize("class_type", ["LunaSharedVAEEncode", "LunaSharedVAEDecode"])
def test_daemon_mode_fails_naming_host_and_port_and_never_uses_the_local_vae(class_type, dead_port, tiny_vae):
    local = ComfyVAEAdapter(tiny_vae)
    cls = getattr(nodes, class_type)
    first = (
        {"pixels": _pixels()}
        if class_type.endswith("Encode")
        else {"samples": {"samples": torch.zeros(1, 4, 4, 6)}}
    )
    with pytest.raises(LunaDaemonNodeError) as caught:
        run_node(
            cls,
            **first,
            model_set="default",
            mode="daemon",
            tiling="auto",
            vae=local,
            host="127.0.0.1",
            port=dead_port,
        )
    message = str(caught.value)
    assert f"127.0.0.1:{dead_port}" in message and "unreachable" in message
    assert "set mode to 'auto'" in message
    assert local.calls == []


def test_daemon_mode_clip_error_names_address_from_the_environment(dead_port, monkeypatch):
    monkeypatch.setenv("LUNA_DAEMON_HOST", "127.0.0.1")
    monkeypatch.setenv("LUNA_DAEMON_PORT", str(dead_port))
    with pytest.raises(
        LunaDaemonNodeError,
        match=f"Luna Shared CLIP Encode: the Luna daemon at 127.0.0.1:{dead_port} is unreachable",
    ):
        run_node(nodes.LunaSharedCLIPEncode, text="a cat", model_set="default", mode="daemon")


def test_auto_mode_without_local_input_fails_clearly(dead_port):
    with pytest.raises(LunaDaemonNodeError, match="no local CLIP input to fall back to"):
        run_node(nodes.LunaSharedCLIPEncode, text="a cat", model_set="default", mode="auto", port=dead_port)
    with pytest.raises(LunaDaemonNodeError, match="no local VAE input to fall back to"):
        run_node(
            nodes.LunaSharedVAEDecode,
            samples={"samples": torch.zeros(1, 4, 2, 2)},
            model_set="default",
            mode="auto",
            tiling="auto",
            port=dead_port,
        )


# --------------------------------------------------------------------------- auto: VAE fallback


def test_auto_vae_encode_falls_back_to_the_local_vae_and_logs_why(dead_port, tiny_vae, caplog):
    local = ComfyVAEAdapter(tiny_vae)
    pixels = _pixels(batch=2)
    with caplog.at_level(logging.WARNING, logger="luna_shared_daemon"):
        (latent,) = run_node(
            nodes.LunaSharedVAEEncode,
            pixels=pixels,
            model_set="default",
            mode="auto",
            tiling="auto",
            vae=local,
            port=dead_port,
        )
    assert set(latent) == {"samples"}
    assert torch.equal(latent["samples"], tiny_vae.encode(pixels[:, :, :, :3]))
    assert latent["samples"].shape == (2, 4, 4, 6)
    assert local.calls == ["encode"]
    assert f"127.0.0.1:{dead_port}" in caplog.text and "falling back to the local VAE" in caplog.text


@pytest.mark.expect_log_warnings
def test_auto_vae_decode_falls_back_and_tiling_on_uses_the_tiled_call(dead_port, tiny_vae):
    local = ComfyVAEAdapter(tiny_vae)
    samples = {"samples": torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(5))}
    (image,) = run_node(
        nodes.LunaSharedVAEDecode,
        samples=samples,
        model_set="default",
        mode="auto",
        tiling="off",
        vae=local,
        port=dead_port,
    )
    assert torch.equal(image, tiny_vae.decode(samples["samples"]))
    assert image.shape == (1, 32, 40, 3)
    (tiled,) = run_node(
        nodes.LunaSharedVAEDecode,
        samples=samples,
        model_set="default",
        mode="auto",
        tiling="on",
        vae=local,
        port=dead_port,
    )
    assert torch.equal(tiled, tiny_vae.decode(samples["samples"], tile=True))
    assert local.calls == ["decode", "decode_tiled"]


# -------------------------------------------------------------------------- auto: CLIP fallback


@pytest.mark.expect_log_warnings
def test_auto_clip_falls_back_sd15_without_size_keys(dead_port, text_encoders):
    sd15 = text_encoders["sd15"]
    local = ComfyCLIPAdapter(sd15)
    (conditioning,) = run_node(
        nodes.LunaSharedCLIPEncode,
        text="a red fox",
        model_set="default",
        mode="auto",
        clip=local,
        port=dead_port,
        **SIZE_KEYS,
    )
    expected = sd15.encode("a red fox")
    assert len(conditioning) == 1
    cond, details = conditioning[0]
    assert set(details) == {"pooled_output"}
    assert torch.equal(cond, expected.cond)
    _assert_same_optional(details["pooled_output"], expected.pooled)


@pytest.mark.parametrize("adapter", [ComfyCLIPAdapter, LegacyComfyCLIPAdapter])
@pytest.mark.expect_log_warnings
def test_auto_clip_falls_back_sdxl_with_size_keys_and_clip_skip(dead_port, text_encoders, adapter):
    sdxl = text_encoders["sdxl"]
    local = adapter(sdxl)
    (conditioning,) = run_node(
        nodes.LunaSharedCLIPEncode,
        text="a castle, (night:1.2)",
        model_set="default",
        mode="auto",
        clip_skip=-1,
        clip=local,
        port=dead_port,
        **SIZE_KEYS,
    )
    expected = sdxl.encode("a castle, (night:1.2)", clip_skip=-1)
    cond, details = conditioning[0]
    assert details == {"pooled_output": details["pooled_output"], **SIZE_KEYS}
    assert torch.equal(cond, expected.cond) and torch.equal(details["pooled_output"], expected.pooled)
    assert not torch.equal(cond, sdxl.encode("a castle, (night:1.2)").cond)  # skip mattered
    # clip_skip worked on a clone: the caller's CLIP keeps its own layer setting
    inner = local._inner if isinstance(local, LegacyComfyCLIPAdapter) else local
    assert inner.layer is None


# --------------------------------------------------------------------------------- status node


def test_status_reports_offline_and_never_raises(dead_port):
    text, ok = run_node(nodes.LunaDaemonStatus, host="127.0.0.1", port=dead_port)
    assert ok is False
    assert text.startswith(f"Luna daemon at 127.0.0.1:{dead_port}: offline")


def test_status_reports_a_bad_environment_port_instead_of_raising(monkeypatch):
    monkeypatch.setenv("LUNA_DAEMON_PORT", "not-a-port")
    text, ok = run_node(nodes.LunaDaemonStatus)
    assert ok is False and "LUNA_DAEMON_PORT" in text


def _assert_same_optional(actual, expected):
    if expected is None:
        assert actual is None
    else:
        assert torch.equal(actual, expected)
