"""The node pack against a live daemon (port 0, tiny random-weight models, fp32 on CPU).

Every node's output is compared with the daemon's model code called in this process on the
same files: same tensors, same dict keys as ComfyUI's CLIPTextEncode(SDXL) / VAEEncode /
VAEDecode give. Both the repository import and an installed copy (vendored client) are run.
The daemon is started once per module and waited for on its readiness line, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.comfyui_nodes import install as installer
from daemon.comfyui_nodes import nodes
from daemon.comfyui_nodes.connection import DaemonConnections, LunaDaemonNodeError
from daemon.models.clip import load_text_encoder
from daemon.models.vae import load_vae
from tests.helpers.comfyui_adapters import ComfyCLIPAdapter, ComfyVAEAdapter
from tests.helpers.comfyui_standin import load_custom_node, run_node, unload_custom_node
from tests.helpers.tiny_models import make_tiny_clip, make_tiny_vae

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SIZE_KEYS = {
    "width": 1024,
    "height": 768,
    "crop_w": 0,
    "crop_h": 32,
    "target_width": 1024,
    "target_height": 768,
}
# Same code, same weights, same dtype; only torch's CPU thread count may differ between the
# processes, which can reorder float reductions in the last bits.
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "vae": make_tiny_vae(folder / "vae.safetensors", "ldm", seed=31).path,
        "clip_l": make_tiny_clip(folder / "clip_l.safetensors", "l", "hf", seed=32).path,
        "clip_g": make_tiny_clip(folder / "clip_g.safetensors", "g", "openclip", seed=33).path,
    }


@pytest.fixture(scope="module")
def local_models(model_files):
    """The daemon's model code on the same files, in this process."""
    return {
        "vae": load_vae(model_files["vae"], dtype="fp32"),
        "sdxl": load_text_encoder(clip_l=model_files["clip_l"], clip_g=model_files["clip_g"], dtype="fp32"),
        "sd15": load_text_encoder(clip_l=model_files["clip_l"], dtype="fp32"),
    }


@pytest.fixture(scope="module")
def live_daemon(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("daemon")
    config = folder / "daemon.toml"
    config.write_text(
        '[daemon]\ndevice = "cpu"\nprecision = "fp32"\n'
        '[network]\nhost = "127.0.0.1"\nport = 0\nws_port = 0\n'
        '[scaling]\nmode = "static"\n'
        f"[models.default]\nvae = {json.dumps(str(model_files['vae']))}\n"
        f"clip_l = {json.dumps(str(model_files['clip_l']))}\n"
        f"clip_g = {json.dumps(str(model_files['clip_g']))}\n"
        f"[models.sd15]\nvae = {json.dumps(str(model_files['vae']))}\n"
        f"clip_l = {json.dumps(str(model_files['clip_l']))}\n",
        encoding="utf-8",
    )
    env = dict(os.environ, LUNA_HOME=str(folder / "home"), PYTHONUNBUFFERED="1")
    log_path = folder / "daemon.stderr"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        ready = None
        for line in process.stdout:  # blocks until the daemon prints (or exits: EOF)
            if line.startswith("LUNA_DAEMON_READY "):
                ready = json.loads(line.split(" ", 1)[1])
                break
        if ready is None:
            raise RuntimeError(
                f"daemon exited with {process.wait(timeout=30)} before it was "
                f"ready:\n{log_path.read_text(encoding='utf-8')[-3000:]}"
            )
        yield ready
    finally:
        if process.poll() is None:
            # The daemon's own pid from its READY line (a venv launcher may sit in between).
            if ready:
                os.kill(ready["pid"], signal.SIGTERM)
            else:
                process.kill()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture
def connections(monkeypatch):
    shared = DaemonConnections()
    monkeypatch.setattr(nodes._DaemonNode, "connections", shared)
    yield shared
    shared.close_all()


def _address(daemon) -> dict:
    return {"host": daemon["host"], "port": daemon["port"]}


def _pixels(batch=1, height=32, width=40):
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(11))


# --------------------------------------------------------------------------------------- CLIP


def test_sdxl_clip_encode_matches_in_process_encoder_with_size_keys(live_daemon, local_models, connections):
    text = "a lighthouse at dusk, (storm clouds:1.3), oil painting"
    (conditioning,) = run_node(
        nodes.LunaSharedCLIPEncode,
        text=text,
        model_set="default",
        mode="daemon",
        **SIZE_KEYS,
        **_address(live_daemon),
    )
    expected = local_models["sdxl"].encode(text)
    assert isinstance(conditioning, list) and len(conditioning) == 1
    cond, details = conditioning[0]
    assert set(details) == {"pooled_output", *SIZE_KEYS}
    assert {key: details[key] for key in SIZE_KEYS} == SIZE_KEYS
    assert cond.dtype == torch.float32 and cond.device.type == "cpu"
    assert cond.shape == expected.cond.shape
    torch.testing.assert_close(cond, expected.cond, **CLOSE)
    torch.testing.assert_close(details["pooled_output"], expected.pooled, **CLOSE)


def test_sd15_clip_encode_has_only_pooled_output_and_honours_clip_skip(
    live_daemon, local_models, connections
):
    text = "portrait of a knight"
    (conditioning,) = run_node(
        nodes.LunaSharedCLIPEncode,
        text=text,
        model_set="sd15",
        mode="daemon",
        clip_skip=-2,
        **SIZE_KEYS,
        **_address(live_daemon),
    )
    expected = local_models["sd15"].encode(text, clip_skip=-2)
    cond, details = conditioning[0]
    assert set(details) == {"pooled_output"}
    torch.testing.assert_close(cond, expected.cond, **CLOSE)
    if expected.pooled is None:
        assert details["pooled_output"] is None
    else:
        torch.testing.assert_close(details["pooled_output"], expected.pooled, **CLOSE)
    default_layer = local_models["sd15"].encode(text).cond
    assert not torch.allclose(cond, default_layer)  # the skip reached the daemon


@pytest.mark.expect_log_warnings
def test_unknown_model_set_is_a_clear_daemon_error_and_auto_falls_back(
    live_daemon, local_models, connections
):
    with pytest.raises(LunaDaemonNodeError) as caught:
        run_node(
            nodes.LunaSharedCLIPEncode,
            text="x",
            model_set="no_such_set",
            mode="daemon",
            **_address(live_daemon),
        )
    message = str(caught.value)
    assert f"{live_daemon['host']}:{live_daemon['port']}" in message and "NOT_LOADED" in message
    local = ComfyCLIPAdapter(local_models["sd15"])
    (conditioning,) = run_node(
        nodes.LunaSharedCLIPEncode,
        text="x",
        model_set="no_such_set",
        mode="auto",
        clip=local,
        **_address(live_daemon),
    )
    assert local.calls == [("x", None)]
    assert torch.equal(conditioning[0][0], local_models["sd15"].encode("x").cond)


# ---------------------------------------------------------------------------------------- VAE


@pytest.mark.parametrize("tiling", ["auto", "on", "off"])
def test_vae_encode_matches_in_process_vae(live_daemon, local_models, connections, tiling):
    pixels = torch.cat([_pixels(batch=2), torch.ones(2, 32, 40, 1)], dim=-1)  # RGBA in
    (latent,) = run_node(
        nodes.LunaSharedVAEEncode,
        pixels=pixels,
        model_set="default",
        mode="daemon",
        tiling=tiling,
        **_address(live_daemon),
    )
    tile = {"auto": None, "on": True, "off": False}[tiling]
    expected = local_models["vae"].encode(pixels[:, :, :, :3], tile=tile)
    assert set(latent) == {"samples"}
    assert latent["samples"].shape == (2, 4, 4, 5) and latent["samples"].dtype == torch.float32
    torch.testing.assert_close(latent["samples"], expected, **CLOSE)


def test_vae_decode_matches_in_process_vae_and_round_trips(live_daemon, local_models, connections):
    latent = {"samples": torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(2))}
    (image,) = run_node(
        nodes.LunaSharedVAEDecode,
        samples=latent,
        model_set="default",
        mode="daemon",
        tiling="auto",
        **_address(live_daemon),
    )
    expected = local_models["vae"].decode(latent["samples"])
    assert image.shape == (1, 40, 48, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    torch.testing.assert_close(image, expected, **CLOSE)
    (again,) = run_node(
        nodes.LunaSharedVAEEncode,
        pixels=image,
        model_set="default",
        mode="daemon",
        tiling="auto",
        **_address(live_daemon),
    )
    assert again["samples"].shape == latent["samples"].shape
    image += 1.0  # the node's tensor owns its memory: writing to it is safe
    assert not torch.equal(image, expected)


def test_auto_mode_with_a_live_daemon_never_touches_the_local_vae(live_daemon, local_models, connections):
    local = ComfyVAEAdapter(local_models["vae"])
    run_node(
        nodes.LunaSharedVAEEncode,
        pixels=_pixels(),
        model_set="default",
        mode="auto",
        tiling="auto",
        vae=local,
        **_address(live_daemon),
    )
    assert local.calls == []


# ------------------------------------------------------------------------------------- status


def test_status_node_reports_the_live_daemon(live_daemon, connections):
    text, ok = run_node(nodes.LunaDaemonStatus, **_address(live_daemon))
    assert ok is True
    assert text.startswith(f"Luna daemon at {live_daemon['host']}:{live_daemon['port']}: ok")
    assert "device" in text


def test_environment_selects_the_daemon_when_inputs_are_empty(live_daemon, connections, monkeypatch):
    monkeypatch.setenv("LUNA_DAEMON_HOST", live_daemon["host"])
    monkeypatch.setenv("LUNA_DAEMON_PORT", str(live_daemon["port"]))
    text, ok = run_node(nodes.LunaDaemonStatus, host="", port=0)
    assert ok is True, text


# ------------------------------------------------------------------------------ installed copy


def test_installed_copy_gives_the_same_results_as_the_repository(live_daemon, local_models, tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text("", encoding="utf-8")
    installer.install(root, out=lambda line: None)
    pack = load_custom_node(root / "custom_nodes" / "luna_shared_daemon")
    shared = None
    try:
        connection = sys.modules[pack.module_name + ".connection"]
        assert connection.daemon_client.__name__.endswith("._vendor.client")
        shared = connection.DaemonConnections()
        base = sys.modules[pack.module_name + ".nodes"]._DaemonNode
        base.connections = shared
        text = "a quiet harbour"
        (conditioning,) = run_node(
            pack.node_classes["LunaSharedCLIPEncode"],
            text=text,
            model_set="default",
            mode="daemon",
            **_address(live_daemon),
        )
        torch.testing.assert_close(conditioning[0][0], local_models["sdxl"].encode(text).cond, **CLOSE)
        latent = {"samples": torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(4))}
        (image,) = run_node(
            pack.node_classes["LunaSharedVAEDecode"],
            samples=latent,
            model_set="default",
            mode="daemon",
            tiling="off",
            **_address(live_daemon),
        )
        torch.testing.assert_close(image, local_models["vae"].decode(latent["samples"]), **CLOSE)
        status_text, ok = run_node(pack.node_classes["LunaDaemonStatus"], **_address(live_daemon))
        assert ok is True, status_text
    finally:
        if shared is not None:
            shared.close_all()
        unload_custom_node(pack.module_name)


# ------------------------------------------------------------------- daemon stops mid-workflow


async def test_daemon_stopping_between_nodes_falls_back_in_auto_and_fails_loudly_in_daemon_mode(
    model_files, local_models, connections, caplog
):
    """The shared client survives its daemon going away: auto mode carries the render on."""
    import asyncio

    from tests.helpers.daemon_fixtures import daemon_config, running_daemon

    config = daemon_config(**{"models.default.vae": str(model_files["vae"])})
    latent = {"samples": torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(8))}
    local = ComfyVAEAdapter(local_models["vae"])
    async with running_daemon(config) as server:
        address = {"host": server.ready.host, "port": server.ready.port}
        (image,) = await asyncio.to_thread(
            run_node,
            nodes.LunaSharedVAEDecode,
            samples=latent,
            model_set="default",
            mode="auto",
            tiling="auto",
            vae=local,
            **address,
        )
        assert local.calls == []  # the daemon did the work
    # the daemon is closed now; the shared client still holds its old connection
    (fallback,) = await asyncio.to_thread(
        run_node,
        nodes.LunaSharedVAEDecode,
        samples=latent,
        model_set="default",
        mode="auto",
        tiling="auto",
        vae=local,
        **address,
    )
    assert local.calls == ["decode"]
    torch.testing.assert_close(fallback, image, **CLOSE)
    assert f"{address['host']}:{address['port']}" in caplog.text
    with pytest.raises(LunaDaemonNodeError, match=f"{address['host']}:{address['port']}"):
        await asyncio.to_thread(
            run_node,
            nodes.LunaSharedVAEDecode,
            samples=latent,
            model_set="default",
            mode="daemon",
            tiling="auto",
            vae=local,
            **address,
        )


def test_nodes_on_several_threads_share_one_client_safely(live_daemon, local_models, connections):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"a lantern number {i}" for i in range(6)]

    def encode(text):
        return run_node(
            nodes.LunaSharedCLIPEncode, text=text, model_set="default", mode="daemon", **_address(live_daemon)
        )[0]

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(encode, texts))
    for text, conditioning in zip(texts, results):
        torch.testing.assert_close(conditioning[0][0], local_models["sdxl"].encode(text).cond, **CLOSE)
    assert len(connections) == 1
