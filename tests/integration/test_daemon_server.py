"""The real daemon on port 0: in-process and as ``python -m daemon``; tiny real-layout models.

No sleeps: tests wait on the readiness line, on WebSocket messages and on replies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import numpy as np
import pytest

from daemon.server import DaemonServer, DaemonStartupError
from daemon.wire.client import AsyncDaemonClient, DaemonClient, DaemonError
from daemon.wire.protocol import ErrorCode
from daemon.wire.status import CORE_FIELDS, parse_status_data
from tests.helpers.daemon_fixtures import (
    daemon_config,
    daemon_process,
    run_daemon_to_exit,
    running_daemon,
    tiny_clip_files,
    tiny_vae_file,
    ws_recorder,
)

pytestmark = pytest.mark.integration

SEED_STATUS_KEYS = {
    "status",
    "version",
    "device",
    "precision",
    "uptime_seconds",
    "total_requests",
    "vram_used_gb",
    "vram_total_gb",
    "vae_pool",
    "clip_pool",
}
SEED_POOL_KEYS = {"type", "active_workers", "queue_depth", "total_requests", "worker_ids"}
SEED_SCALING_KEYS = {"event", "pool", "worker_id", "active_workers", "vram_available_gb"}


def latent(batch: int = 1, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, size, size)).astype(np.float32)


def assert_seed_status(data: dict) -> None:
    assert data.keys() >= SEED_STATUS_KEYS
    assert list(data)[: len(SEED_STATUS_KEYS)] == list(CORE_FIELDS)  # the core fields' order, first
    parse_status_data(data)  # and the typed parser accepts what the daemon sends
    assert data["status"] == "ok"
    assert data["device"] == "cpu (system RAM reported as VRAM)"
    assert isinstance(data["uptime_seconds"], float) and isinstance(data["total_requests"], int)
    assert 0 < data["vram_used_gb"] <= data["vram_total_gb"]
    for name in ("vae", "clip"):
        pool = data[f"{name}_pool"]
        assert pool.keys() >= SEED_POOL_KEYS and pool["type"] == name
        assert pool["active_workers"] == len(pool["worker_ids"])


async def client_for(server: DaemonServer, **kw) -> AsyncDaemonClient:
    return AsyncDaemonClient(server.ready.host, server.ready.port, shared_memory=False, **kw)


# ------------------------------------------------------------------------- no models (make run)


async def test_daemon_without_models_serves_status_and_answers_not_loaded():
    async with running_daemon(daemon_config()) as server:
        client = await client_for(server)
        try:
            status = await client.status()
            assert_seed_status(status)
            assert status["version"].endswith("-dynamic") and status["models"] == {}
            for call in (client.clip_encode("a cat"), client.vae_decode(latent())):
                with pytest.raises(DaemonError) as err:
                    await call
                assert err.value.code is ErrorCode.NOT_LOADED
                assert "not configured" in err.value.message
            assert (await client.models())["sets"] == {}
        finally:
            await client.close()


async def test_passive_listener_gets_status_messages_with_every_seed_field():
    async with running_daemon(daemon_config()) as server:
        async with ws_recorder(server.ready.host, server.ready.ws_port) as ws:
            messages = [await ws.next("status") for _ in range(4)]
    for message in messages:
        assert message.keys() == {"type", "data"}
        assert_seed_status(message["data"])
    uptimes = [m["data"]["uptime_seconds"] for m in messages]
    assert uptimes == sorted(uptimes)


# ------------------------------------------------------------------------- VAE round trips


async def test_vae_decode_and_encode_match_the_in_process_model(tmp_path):
    from daemon.models.vae import load_vae

    path = tiny_vae_file(tmp_path)
    local = load_vae(path, device="cpu", dtype="fp32")
    async with running_daemon(daemon_config(**{"models.default.vae": str(path)})) as server:
        client = await client_for(server)
        try:
            z = latent(size=8)
            image = await client.vae_decode(z)
            import torch

            expected = local.decode(torch.from_numpy(z)).numpy()
            np.testing.assert_allclose(image, expected, atol=1e-5)
            assert image.shape == (1, 64, 64, 3)
            back = await client.vae_encode(image)
            assert back.shape == (1, 4, 8, 8)
            models = await client.models()
            vae_info = models["sets"]["default"]["vae"]
            assert (vae_info["state"], vae_info["device"], vae_info["dtype"]) == ("loaded", "cpu", "float32")
        finally:
            await client.close()


async def test_every_bad_input_gets_a_typed_error_and_the_next_request_succeeds(tmp_path):
    path = tiny_vae_file(tmp_path)
    bad_requests = [
        ("vae_decode", {}, [latent()[:, :3]], ErrorCode.BAD_REQUEST),  # 3 channels
        ("vae_decode", {}, [latent()[0]], ErrorCode.BAD_REQUEST),  # 3-D
        ("vae_decode", {}, [], ErrorCode.BAD_REQUEST),  # no tensor
        ("vae_decode", {}, [latent(), latent()], ErrorCode.BAD_REQUEST),  # two tensors
        ("vae_decode", {}, [np.zeros((1, 4, 8, 8), np.int32)], ErrorCode.BAD_REQUEST),
        ("vae_decode", {}, [np.full((1, 4, 8, 8), np.nan, np.float32)], ErrorCode.BAD_REQUEST),
        ("vae_decode", {"tile": "yes"}, [latent()], ErrorCode.BAD_REQUEST),
        ("vae_decode", {"model": 7}, [latent()], ErrorCode.BAD_REQUEST),
        ("vae_decode", {"model": "nope"}, [latent()], ErrorCode.NOT_LOADED),
        ("vae_encode", {}, [np.zeros((1, 64, 64, 2), np.float32)], ErrorCode.BAD_REQUEST),
        ("vae_encode", {}, [np.zeros((1, 4, 4, 3), np.float32)], ErrorCode.BAD_REQUEST),
        ("clip_encode", {}, [], ErrorCode.BAD_REQUEST),  # no text
        ("clip_encode", {"text": "x", "clip_skip": 3}, [], ErrorCode.BAD_REQUEST),
        ("clip_encode", {"text": "x"}, [latent()], ErrorCode.BAD_REQUEST),
        ("clip_encode", {"text": "x"}, [], ErrorCode.NOT_LOADED),  # set has no CLIP
        ("no_such_op", {}, [], ErrorCode.BAD_REQUEST),
    ]
    async with running_daemon(daemon_config(**{"models.default.vae": str(path)})) as server:
        client = await client_for(server)
        try:
            for op, options, tensors, code in bad_requests:
                with pytest.raises(DaemonError) as err:
                    await client.request(op, options, tensors)
                assert err.value.code is code, (op, options, err.value)
                assert err.value.message
                image = await client.vae_decode(latent())
                assert image.shape == (1, 64, 64, 3)
            status = await client.status()
            assert status["traffic"]["errors_by_code"]["BAD_REQUEST"] >= 12
            assert status["status"] == "ok"
        finally:
            await client.close()


@pytest.mark.expect_log_warnings
async def test_broken_model_file_is_reported_and_the_daemon_keeps_running(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    good = tiny_vae_file(tmp_path)
    config = daemon_config(
        **{"models.default.vae": str(broken), "models.good.vae": str(good), "daemon.load_models": "start"}
    )
    async with running_daemon(config) as server:
        client = await client_for(server)
        try:
            with pytest.raises(DaemonError) as err:
                await client.vae_decode(latent())
            assert err.value.code is ErrorCode.NOT_LOADED
            assert "broken.safetensors" in err.value.message and "failed to load" in err.value.message
            assert (await client.vae_decode(latent(), model="good")).shape == (1, 64, 64, 3)
            models = await client.models()
            assert models["sets"]["default"]["vae"]["state"] == "error"
            assert models["sets"]["good"]["vae"]["state"] == "loaded"
        finally:
            await client.close()


# ------------------------------------------------------------------------- CLIP


async def test_clip_encode_sd15_and_sdxl_sets_match_in_process_and_hit_the_cache(tmp_path):
    from daemon.models.clip import load_text_encoder

    sd15 = tiny_clip_files(tmp_path, seed=0)
    sdxl = tiny_clip_files(tmp_path, sdxl=True, seed=10)
    config = daemon_config(
        **{
            "models.default.clip_l": str(sd15["clip_l"]),
            "models.xl.clip_l": str(sdxl["clip_l"]),
            "models.xl.clip_g": str(sdxl["clip_g"]),
        }
    )
    local = load_text_encoder(clip_l=sd15["clip_l"], device="cpu", dtype="fp32")
    async with running_daemon(config) as server:
        client = await client_for(server)
        try:
            result, tensors = await client.request("clip_encode", {"text": "a (red:1.2) fox"})
            assert result == {"model": "default", "kind": "sd15", "cache_hit": False}
            expected = local.encode("a (red:1.2) fox")
            np.testing.assert_allclose(tensors[0], expected.cond.numpy(), atol=1e-5)
            again, tensors2 = await client.request("clip_encode", {"text": "a (red:1.2) fox"})
            assert again["cache_hit"] is True
            np.testing.assert_array_equal(tensors[0], tensors2[0])
            skipped, _ = await client.request("clip_encode", {"text": "a (red:1.2) fox", "clip_skip": -2})
            assert skipped["cache_hit"] is False  # clip_skip is part of the key

            cond, pooled = await client.clip_encode("a castle", model="xl")
            assert cond.shape[0] == 1 and cond.shape[1] == 77 and pooled is not None
            xl_result, _ = await client.request("clip_encode", {"text": "a castle", "model": "xl"})
            assert (xl_result["kind"], xl_result["cache_hit"]) == ("sdxl", True)

            status = await client.status()
            assert status["prompt_cache"]["hits"] == 2 and status["prompt_cache"]["misses"] == 3
            assert status["clip_pool"]["total_requests"] == 3
            assert {
                name: {k: m["state"] for k, m in kinds.items()} for name, kinds in status["models"].items()
            } == {
                "default": {"clip": "loaded"},
                "xl": {"clip": "loaded"},
            }
            # the dtype the model really computes in (fp32 on a CPU without native bf16)
            assert status["models"]["default"]["clip"]["dtype"] in ("float32", "bfloat16")
        finally:
            await client.close()


async def test_concurrent_identical_prompts_are_encoded_once(tmp_path):
    files = tiny_clip_files(tmp_path)
    config = daemon_config(**{"models.default.clip_l": str(files["clip_l"]), "daemon.load_models": "start"})
    async with running_daemon(config) as server:
        clients = [await client_for(server) for _ in range(6)]
        try:
            results = await asyncio.gather(*(c.clip_encode("the fixed negative prompt") for c in clients))
            status = await clients[0].status()
        finally:
            for client in clients:
                await client.close()
    assert all(np.array_equal(r[0], results[0][0]) for r in results)
    assert status["clip_pool"]["total_requests"] == 1


# ------------------------------------------------------------------------- scaling


async def test_load_scales_vae_pool_up_and_idle_scales_it_down_with_ws_events(tmp_path):
    path = tiny_vae_file(tmp_path)
    config = daemon_config(
        **{
            "models.default.vae": str(path),
            "scaling.max_vae_workers": 3,
            "scaling.scale_up_queue_threshold": 1,
            "scaling.scale_up_delay": 0.0,
            "scaling.idle_timeout": 0.3,
            "daemon.load_models": "start",
        }
    )
    async with running_daemon(config) as server:
        async with ws_recorder(server.ready.host, server.ready.ws_port) as ws:
            await ws.next("status")
            clients = [await client_for(server) for _ in range(8)]
            try:
                await clients[0].vae_decode(latent())  # model loaded before the burst

                async def burst(client: AsyncDaemonClient, seed: int) -> None:
                    for i in range(3):
                        await client.vae_decode(latent(size=16, seed=seed * 10 + i))

                work = asyncio.gather(*(burst(c, i) for i, c in enumerate(clients)))
                up = (await ws.next("scaling", lambda d: d["event"] == "scale_up"))["data"]
                await work
            finally:
                for client in clients:
                    await client.close()
            assert up.keys() == SEED_SCALING_KEYS
            assert up["pool"] == "vae" and up["worker_id"] >= 1 and up["active_workers"] >= 2
            assert isinstance(up["vram_available_gb"], float) and up["vram_available_gb"] > 0

            down = (
                await ws.next("scaling", lambda d: d["event"] == "scale_down" and d["active_workers"] == 1)
            )["data"]
            assert down.keys() == SEED_SCALING_KEYS
            assert down["pool"] == "vae" and down["worker_id"] >= 1
            status = (await ws.next("status", lambda d: d["vae_pool"]["active_workers"] == 1))["data"]
            assert status["vae_pool"]["worker_ids"] == [0]
            assert status["vae_pool"]["total_requests"] == 25
            assert status["total_requests"] == 25
            assert status["clip_pool"]["active_workers"] == 1


async def test_static_mode_keeps_one_worker_per_pool(tmp_path):
    path = tiny_vae_file(tmp_path)
    config = daemon_config(**{"models.default.vae": str(path), "scaling.mode": "static"})
    async with running_daemon(config) as server:
        clients = [await client_for(server) for _ in range(4)]
        try:
            await asyncio.gather(*(c.vae_decode(latent(size=16)) for c in clients))
            status = await clients[0].status()
        finally:
            for client in clients:
                await client.close()
    assert status["version"].endswith("-static")
    assert status["vae_pool"]["worker_ids"] == [0] and status["vae_pool"]["mode"] == "static"


# ------------------------------------------------------------------------- lifecycle


async def test_shutdown_op_needs_the_token():
    async with running_daemon(daemon_config()) as server:
        client = await client_for(server)
        try:
            with pytest.raises(DaemonError) as err:
                await client.request("shutdown")
            assert err.value.code is ErrorCode.UNAUTHORIZED
            with pytest.raises(DaemonError):
                await client.request("shutdown", {"token": "wrong"})
            assert (await client.status())["status"] == "ok"
            with pytest.raises(DaemonError) as err:
                await client.shutdown()  # a client without the token
            assert err.value.code is ErrorCode.UNAUTHORIZED
            owner = await client_for(server, token=server.token)
            try:
                await owner.shutdown()  # sends the token in the op
            finally:
                await owner.close()
            reason = await asyncio.wait_for(server.serve_forever(), 10)
            assert reason.startswith("shutdown op")
        finally:
            await client.close()


async def test_stop_lets_the_request_in_flight_finish_then_refuses_new_work(tmp_path):
    path = tiny_vae_file(tmp_path)
    config = daemon_config(**{"models.default.vae": str(path), "daemon.load_models": "start"})
    async with running_daemon(config) as server:
        client = await client_for(server)
        late = await client_for(server)
        try:
            await client.vae_decode(latent())
            await late.ping()
            async with ws_recorder(server.ready.host, server.ready.ws_port) as ws:
                in_flight = asyncio.create_task(client.vae_decode(latent(size=32)))
                await ws.next("status", lambda d: d["vae_pool"]["busy_workers"] == 1)
                server.request_shutdown("test")
                closing = asyncio.create_task(server.close(grace=30))
                image = await in_flight  # finished, not cut off
                assert image.shape == (1, 256, 256, 3)
                await closing
            with pytest.raises((DaemonError, ConnectionError)):
                await late.vae_decode(latent())
        finally:
            await client.close()
            await late.close()


async def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DaemonServer(daemon_config(**{"network.port": port}))
        with pytest.raises(DaemonStartupError, match=f"port {port} on 127.0.0.1 is already in use"):
            await server.start()
        await server.close()
        server = DaemonServer(daemon_config(**{"network.ws_port": port}))
        with pytest.raises(DaemonStartupError, match="status WebSocket"):
            await server.start()
        await server.close()


# ------------------------------------------------------------------------- subprocess


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM on Windows: os.kill is TerminateProcess")
async def test_subprocess_daemon_prints_readiness_serves_and_stops_on_sigterm(tmp_path):
    path = tiny_vae_file(tmp_path)
    args = (
        "--port",
        "0",
        "--ws-port",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--vae",
        str(path),
        "--idle-timeout",
        "5",
    )
    async with daemon_process(*args) as (proc, ready):
        # The READY line's pid is the daemon's; the launched one may be a venv launcher (Windows).
        assert ready.pid > 0
        async with ws_recorder(ready.host, ready.ws_port) as ws:
            status = (await ws.next("status"))["data"]
            assert_seed_status(status)
            assert status["config"]["scaling"]["idle_timeout"] == 5.0
        image = await asyncio.to_thread(_blocking_decode, ready.host, ready.port)
        assert image.shape == (1, 64, 64, 3)
        os.kill(ready.pid, signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert "stopping: signal SIGTERM" in err.decode()


def _blocking_decode(host: str, port: int) -> np.ndarray:
    with DaemonClient(host, port) as client:
        return client.vae_decode(latent())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal")
async def test_subprocess_daemon_stops_on_sigint_and_on_the_shutdown_op(luna_home):
    async with daemon_process("--port", "0", "--ws-port", "0", "--device", "cpu") as (proc, ready):
        os.kill(ready.pid, signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0
    async with daemon_process("--port", "0", "--ws-port", "0", "--device", "cpu") as (proc, ready):
        token = (luna_home / "config" / "daemon.token").read_text().strip()
        result = await asyncio.to_thread(_blocking_shutdown, ready.host, ready.port, token)
        assert result == {"shutting_down": True}
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0


def _blocking_shutdown(host: str, port: int, token: str) -> dict:
    with DaemonClient(host, port, token=token) as client:
        client.shutdown()
    return {"shutting_down": True}


async def test_subprocess_invalid_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scaling]\nmax_vae_workers = 0\n")
    code, out, err = await run_daemon_to_exit("--config", str(bad), "--port", "0", "--ws-port", "0")
    assert code == 2 and "scaling.max_vae_workers" in err and "LUNA_DAEMON_READY" not in out
    code, _, err = await run_daemon_to_exit("--port", "0", "--ws-port", "0", "--max-clip-workers", "-1")
    assert code == 2 and "--max-clip-workers" in err


@pytest.mark.slow
async def test_subprocess_port_in_use_exits_2_with_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_daemon_to_exit("--port", str(port), "--ws-port", "0", "--device", "cpu")
    assert code == 2 and "already in use" in err and "LUNA_DAEMON_READY" not in out
