"""Smoke tests of the built PyInstaller bundle (``make bundle``, then ``make bundle-test``).

Each runs a frozen executable of ``dist/Luna/`` as the operator would, with none of this
checkout's Python on its path: ``Luna gui --self-test`` (the window, offscreen, with the bundled
``luna-daemon`` as its child), ``luna-daemon`` on port 0 (READY line, status over the WebSocket,
a VAE decode, the authenticated shutdown op), ``luna-llm-server`` on the bundled starter model,
and ``luna-daemon install-comfyui-nodes`` from the node pack's sources shipped as data. Skipped
with the reason when no bundle is built; deselected from ``make test`` by the ``bundle`` marker.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from daemon.wire.client import AsyncDaemonClient
from tests.helpers.daemon_fixtures import tiny_vae_file, wait_ready
from tests.smoke.bundle import REPO_ROOT, bundle_dir, child_env, executable, missing_reason

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.integration,
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]

#: What the frozen window may print on stderr during its self-test: the operator log's INFO and
#: WARNING records (no ComfyUI runs here, so the router warns that the instances are down) and
#: the offscreen platform plugin's notice. Anything else (a traceback, a missing module or Qt
#: plugin, a bootloader or Python warning, an ERROR record) fails the test.
STDERR_ALLOWED = (
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) (app|daemon|luna)(\.\w+)*: "),
    re.compile(r"^This plugin does not support propagateSizeHints\(\)$"),
)


async def _communicate(proc: asyncio.subprocess.Process, timeout: float) -> tuple[str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    return out.decode(errors="replace"), err.decode(errors="replace")


async def test_frozen_self_test_exits_0_with_only_expected_stderr(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        str(executable("Luna")),
        "gui",
        "--self-test",
        "--self-test-timeout",
        "120",
        cwd=str(tmp_path),
        env=child_env(tmp_path / "home"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await _communicate(proc, 240)
    assert proc.returncode == 0, out + err[-4000:]
    assert "self-test: ok   daemon child started and ready" in out
    assert out.rstrip().endswith("self-test: passed")
    unexpected = [
        line for line in err.splitlines() if line.strip() and not any(p.match(line) for p in STDERR_ALLOWED)
    ]
    assert unexpected == [], "unexpected stderr:\n" + "\n".join(unexpected)


async def test_frozen_daemon_reports_ready_answers_status_decodes_and_stops_on_the_shutdown_op(tmp_path):
    home = tmp_path / "home"
    proc = await asyncio.create_subprocess_exec(
        str(executable("luna-daemon")),
        "--port",
        "0",
        "--ws-port",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--vae",
        str(tiny_vae_file(tmp_path)),  # frozen torch really runs: a real-layout VAE decodes
        cwd=str(tmp_path),
        env=child_env(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ready = await wait_ready(proc, 120)
        assert ready.port > 0 and ready.ws_port > 0
        async with connect(f"ws://{ready.host}:{ready.ws_port}") as ws, asyncio.timeout(30):
            first = json.loads(await ws.recv())  # the full status every client gets on connect
            assert first["type"] == "status" and "pid" in first["data"]
            await ws.send(json.dumps({"type": "get_status"}))
            while True:  # 1 Hz statuses carry no static facts: the one with a pid is the reply
                message = json.loads(await ws.recv())
                if message["type"] == "status" and "pid" in message["data"]:
                    break
        status = message["data"]
        assert status["status"] == "ok"
        assert status["device"].startswith("cpu")
        assert status["pid"] == ready.pid
        token = (home / "config" / "daemon.token").read_text().strip()
        client = AsyncDaemonClient(ready.host, ready.port, token=token)
        try:
            latent = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
            image = await client.vae_decode(latent)
            assert image.shape == (1, 64, 64, 3)
            assert np.isfinite(image).all()
            await client.shutdown()
        finally:
            await client.close()
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_frozen_llm_server_serves_the_bundled_starter_model(tmp_path):
    model = bundle_dir() / "_internal" / "resources" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.is_file()
    proc = await asyncio.create_subprocess_exec(
        str(executable("luna-llm-server")),
        "--model",
        str(model),
        "--model_alias",
        "starter",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--n_ctx",
        "512",
        cwd=str(tmp_path),
        env=child_env(tmp_path / "home"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []
    drain: asyncio.Task[bytes] | None = None
    try:
        # uvicorn's own readiness line carries the port it bound (port 0 → a free one).
        async with asyncio.timeout(120):
            while True:
                raw = await proc.stdout.readline()
                assert raw, "luna-llm-server exited:\n" + "".join(output[-40:])
                output.append(raw.decode(errors="replace"))
                found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", output[-1])
                if found:
                    port = int(found.group(1))
                    break
        drain = asyncio.create_task(proc.stdout.read())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http:
            models = (await http.get("/models")).json()
            assert [item["id"] for item in models["data"]] == ["starter"]
            reply = await http.post(
                "/chat/completions",
                json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"].strip()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        if drain is not None:
            await drain


async def test_frozen_daemon_installs_the_node_pack_from_its_data_into_comfyui(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("# ComfyUI\n")
    proc = await asyncio.create_subprocess_exec(
        str(executable("luna-daemon")),
        "install-comfyui-nodes",
        "--comfyui",
        str(comfyui),
        cwd=str(tmp_path),
        env=child_env(tmp_path / "home"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await _communicate(proc, 120)
    assert proc.returncode == 0, out + err
    pack = comfyui / "custom_nodes" / "luna_shared_daemon"
    # Byte for byte the checkout's node modules and wire package (frozen, they come from data).
    for source in sorted((REPO_ROOT / "daemon" / "comfyui_nodes").glob("*.py")):
        if source.name != "install.py":
            assert (pack / source.name).read_bytes() == source.read_bytes(), source.name
    for source in sorted((REPO_ROOT / "daemon" / "wire").glob("*.py")):
        if source.name != "__init__.py":
            assert (pack / "_vendor" / source.name).read_bytes() == source.read_bytes(), source.name
    assert not (pack / "install.py").exists()
