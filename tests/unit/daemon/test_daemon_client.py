"""DaemonClient / AsyncDaemonClient / health checks against a real TcpService on port 0 whose
test handler does real numpy work in ComfyUI's tensor conventions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from daemon.tcp_service import TcpService
from daemon.wire.client import (
    AsyncDaemonClient,
    DaemonClient,
    DaemonError,
    DaemonTimeout,
    DaemonUnavailable,
    check_daemon_health,
    check_daemon_health_ws,
)
from daemon.wire.protocol import ErrorCode, Limits, OpError

REPO = Path(__file__).resolve().parents[3]
OPS = ("clip_encode", "vae_encode", "vae_decode", "status", "models", "shutdown", "wait", "echo")


class ComfyShapedOps:
    """Real numpy stand-ins with ComfyUI's shapes: 8×8 average pooling to 4 latent channels,
    nearest upsampling back to RGB, and a text hash as conditioning."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.release = asyncio.Event()
        self.shutdowns = 0

    async def handle(self, op, options, tensors, peer):
        self.calls.append((op, options))
        if op == "vae_encode":
            (pixels,) = tensors
            b, h, w, _ = pixels.shape
            pooled = pixels[..., :3].reshape(b, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
            latent = np.concatenate([pooled, pooled.mean(axis=-1, keepdims=True)], axis=-1)
            return {"model": options["model"]}, [np.ascontiguousarray(latent.transpose(0, 3, 1, 2))]
        if op == "vae_decode":
            (latent,) = tensors
            rgb = latent[:, :3].transpose(0, 2, 3, 1).repeat(8, axis=1).repeat(8, axis=2)
            return {"model": options["model"]}, [np.clip(rgb, 0, 1)]
        if op == "clip_encode":
            seed = sum(options["text"].encode()) + (options["clip_skip"] or 0)
            cond = np.random.default_rng(seed).random((1, 77, 8), dtype=np.float32)
            if options["model"] == "sd15":
                return {"kind": "sd15"}, [cond]
            return {"kind": "sdxl"}, [cond, cond[:, 0, :4].copy()]
        if op == "status":
            return {"status": "ok", "peer": peer.client_name}, []
        if op == "models":
            return {"sets": {"default": {}}}, []
        if op == "shutdown":
            self.shutdowns += 1
            return {"shutting_down": True}, []
        if op == "wait":
            await self.release.wait()
            return {}, []
        if op == "echo":
            return {}, tensors
        raise OpError(ErrorCode.BAD_REQUEST, op)


@pytest.fixture
async def service():
    handler = ComfyShapedOps()
    tcp = TcpService(handler, host="127.0.0.1", port=0, token=None, limits=Limits(), ops=OPS)
    await tcp.start()
    tcp.test_handler = handler
    yield tcp
    handler.release.set()
    await tcp.close(grace=1.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def drop_server_connections(service: TcpService) -> None:
    """Make the server hang up on every client (as a restart or network fault would)."""
    for connection in list(service._connections):
        connection.stop()
    async with asyncio.timeout(5):
        while service.stats.connections_open:
            await asyncio.sleep(0)


# ------------------------------------------------------------------------------ blocking


def test_unreachable_daemon_raises_daemon_unavailable_naming_host_and_port():
    port = free_port()
    with pytest.raises(DaemonUnavailable) as caught:
        DaemonClient("127.0.0.1", port, connect_timeout=1).ping()
    assert caught.value.host == "127.0.0.1" and caught.value.port == port
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


@pytest.mark.parametrize("shared_memory", [False, True])
async def test_vae_and_clip_calls_use_comfyui_conventions(service, shared_memory):
    pixels = np.random.default_rng(0).random((2, 64, 48, 3), dtype=np.float32)

    def run():
        with DaemonClient(*service.address, shared_memory=shared_memory) as client:
            assert client.uses_shared_memory is shared_memory
            latent = client.vae_encode(pixels, model="pony", tile=True)
            image = client.vae_decode(latent)
            cond, pooled = client.clip_encode("a cat", clip_skip=-2)
            cond15, pooled15 = client.clip_encode("a cat", model="sd15")
            return latent, image, cond, pooled, cond15, pooled15

    latent, image, cond, pooled, cond15, pooled15 = await asyncio.to_thread(run)
    assert latent.shape == (2, 4, 8, 6) and latent.dtype == np.float32
    assert image.shape == (2, 64, 48, 3) and image.dtype == np.float32
    assert cond.shape == (1, 77, 8) and pooled.shape == (1, 4) and pooled15 is None
    np.testing.assert_allclose(
        latent[:, 0], pixels[..., 0].reshape(2, 8, 8, 6, 8).mean(axis=(2, 4)), rtol=1e-6
    )
    calls = dict(service.test_handler.calls)
    assert calls["vae_encode"] == {"model": "pony", "tile": True}
    assert calls["clip_encode"]["model"] == "sd15"
    assert service.stats.shm_bytes_in > 0 if shared_memory else service.stats.shm_bytes_in == 0


async def test_inputs_are_checked_and_converted_to_float32(service):
    def run():
        with DaemonClient(*service.address, shared_memory=False) as client:
            with pytest.raises(ValueError, match="4 dimensions"):
                client.vae_encode(np.zeros((8, 8, 3), np.float32))
            return client.vae_encode(np.zeros((1, 16, 16, 4), np.float64))

    assert (await asyncio.to_thread(run)).shape == (1, 4, 2, 2)
    sent = [options for op, options in service.test_handler.calls if op == "vae_encode"]
    assert len(sent) == 1


async def test_error_responses_raise_daemon_error_with_code(service):
    def run():
        with DaemonClient(*service.address, shared_memory=False) as client:
            with pytest.raises(DaemonError) as caught:
                client.request("nonsense")
            assert client.ping() > 0  # the connection survived
            return caught.value

    error = await asyncio.to_thread(run)
    assert error.code is ErrorCode.BAD_REQUEST and not error.retryable and "unknown op" in error.message


async def test_one_client_is_safe_to_share_between_threads(service):
    results: dict[int, np.ndarray] = {}

    def worker(client: DaemonClient, index: int) -> None:
        pixels = np.full((1, 16, 16, 3), index / 10, dtype=np.float32)
        results[index] = client.vae_encode(pixels)

    def run():
        with DaemonClient(*service.address) as client:
            threads = [threading.Thread(target=worker, args=(client, i)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    await asyncio.to_thread(run)
    assert sorted(results) == list(range(8))
    for index, latent in results.items():
        np.testing.assert_allclose(latent, index / 10, rtol=1e-6)


async def test_broken_connection_is_reopened_once_for_idempotent_ops(service):
    client = DaemonClient(*service.address, shared_memory=False)
    try:
        assert (await asyncio.to_thread(client.status))["status"] == "ok"
        await drop_server_connections(service)
        assert (await asyncio.to_thread(client.status))["status"] == "ok"  # transparently
        assert service.stats.connections_total == 2
        await drop_server_connections(service)
        with pytest.raises(DaemonUnavailable):
            await asyncio.to_thread(client.shutdown)  # not idempotent: never sent twice
        assert service.test_handler.shutdowns == 0
    finally:
        client.close()


async def test_timeout_raises_daemon_timeout_and_the_next_call_works(service):
    client = DaemonClient(*service.address, timeout=0.2, shared_memory=False)
    try:
        with pytest.raises(DaemonTimeout) as caught:
            await asyncio.to_thread(client.request, "wait")
        assert caught.value.code is ErrorCode.TIMEOUT and caught.value.retryable
        assert isinstance(caught.value, TimeoutError)
        assert (await asyncio.to_thread(client.status))["status"] == "ok"
    finally:
        client.close()


async def test_request_over_the_daemon_limit_is_refused_before_sending():
    handler = ComfyShapedOps()
    tcp = TcpService(
        handler, host="127.0.0.1", port=0, token=None, limits=Limits(max_payload_bytes=1 << 16), ops=OPS
    )
    await tcp.start()
    try:

        def run():
            with DaemonClient(*tcp.address, shared_memory=False) as client:
                with pytest.raises(DaemonError) as caught:
                    client.request("echo", {}, (np.zeros(1 << 16, np.float32),))
                assert client.ping() > 0
                return caught.value

        assert (await asyncio.to_thread(run)).code is ErrorCode.TOO_LARGE
    finally:
        await tcp.close()


async def test_half_precision_wire_dtype_round_trips_through_the_client(service):
    values = np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(1, 128, 128)

    def run():
        with DaemonClient(*service.address, shared_memory=False) as client:
            return client.request("echo", {}, (values,), wire_dtype="bfloat16")

    _, (echoed,) = await asyncio.to_thread(run)
    assert echoed.dtype == np.float32
    np.testing.assert_allclose(echoed, values, atol=4e-3)
    assert service.stats.bytes_in < values.nbytes * 0.6  # 16 bits per value on the wire


async def test_client_name_reaches_the_handler(service):
    def run():
        with DaemonClient(*service.address, client_name="comfyui-8188") as client:
            return client.status()

    assert (await asyncio.to_thread(run))["peer"] == "comfyui-8188"


@pytest.mark.parametrize("shared_memory", [False, True])
async def test_a_held_answer_array_is_never_written_over_by_later_requests(service, shared_memory):
    first = np.full(1 << 20, 1.0, np.float32)  # 4 MiB: recycled buffers / shared memory

    def run():
        with DaemonClient(*service.address, shared_memory=shared_memory) as client:
            assert client.uses_shared_memory is shared_memory
            _, (held,) = client.request("echo", {}, (first,))
            view = held[::2]  # anything made from it keeps the memory out of reuse too
            del held
            later = [client.request("echo", {}, (first * k,))[1][0] for k in (2, 3)]
            np.testing.assert_array_equal(view, 1.0)
            np.testing.assert_array_equal(later[0], 2.0)
            np.testing.assert_array_equal(later[1], 3.0)
            view[:] = 5.0  # writable, and ours alone
            return view

    view = await asyncio.to_thread(run)
    np.testing.assert_array_equal(view, 5.0)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="Linux /dev/shm only")
async def test_close_unlinks_every_segment_even_while_an_answer_array_is_held(service):
    values = np.arange(1 << 18, dtype=np.float32)

    def run():
        client = DaemonClient(*service.address, shared_memory=True)
        _, (held,) = client.request("echo", {}, (values,))
        prefix = client._connection.session.shm_prefix
        assert any(p.name.startswith(prefix) for p in Path("/dev/shm").iterdir())
        client.close()
        return held, prefix

    held, prefix = await asyncio.to_thread(run)
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)]
    np.testing.assert_array_equal(held, values)  # still mapped, unchanged


LEAK_SCRIPT = """
import sys
import numpy as np
from daemon.wire.client import DaemonClient

client = DaemonClient("127.0.0.1", int(sys.argv[1]), shared_memory=True)
assert client.uses_shared_memory
_, (kept,) = client.request("echo", {}, (np.ones(1 << 20, np.float32),))
print(client._connection.session.shm_prefix)
# exits normally without close(): the client and an answer array are still alive
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the resource tracker is POSIX only")
async def test_a_process_that_exits_without_closing_leaves_no_shared_memory_behind(service):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", LEAK_SCRIPT, str(service.address[1])],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "leaked" not in result.stderr and "resource_tracker" not in result.stderr, result.stderr
    prefix = result.stdout.strip()
    assert prefix.startswith("lu")
    if Path("/dev/shm").is_dir():
        assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)]


# ------------------------------------------------------------------------------- asyncio


async def test_async_client_pipelines_and_matches_answers(service):
    async with AsyncDaemonClient(*service.address, shared_memory=False) as client:
        waiting = asyncio.ensure_future(client.request("wait"))
        pixels = [np.full((1, 16, 16, 3), i / 4, dtype=np.float32) for i in range(4)]
        latents = await asyncio.gather(*(client.vae_encode(p) for p in pixels))
        assert not waiting.done()  # the slow one did not hold the others back
        service.test_handler.release.set()
        await waiting
        cond, pooled = await client.clip_encode("dog")
    for i, latent in enumerate(latents):
        np.testing.assert_allclose(latent, i / 4, rtol=1e-6)
    assert cond.shape == (1, 77, 8) and pooled.shape == (1, 4)


async def test_async_client_timeout_and_close_cancel_cleanly(service):
    client = AsyncDaemonClient(*service.address, timeout=0.1)
    with pytest.raises(DaemonTimeout):
        await client.request("wait")
    assert (await client.status())["status"] == "ok"
    reader_task = client._reader_task
    await client.close()
    assert reader_task.done()
    assert client._reader_task is None


async def test_async_client_survives_a_dropped_connection(service):
    async with AsyncDaemonClient(*service.address) as client:
        pending = asyncio.ensure_future(client.request("wait"))
        await asyncio.sleep(0)
        await drop_server_connections(service)
        with pytest.raises(DaemonUnavailable):
            await pending
        assert (await client.models()) == {"sets": {"default": {}}}


async def test_async_client_reopens_a_broken_connection_once_for_idempotent_ops_only(service):
    async with AsyncDaemonClient(*service.address, shared_memory=False) as client:
        assert (await client.status())["status"] == "ok"
        await drop_server_connections(service)
        assert (await client.status())["status"] == "ok"  # transparently, like the blocking client
        assert service.stats.connections_total == 2
        await drop_server_connections(service)
        with pytest.raises(DaemonUnavailable):
            await client.shutdown()  # not idempotent: never sent twice
        assert service.test_handler.shutdowns == 0


def test_both_clients_default_their_name_to_the_process():
    assert DaemonClient().client_name == f"luna-client/{os.getpid()}"
    assert AsyncDaemonClient(client_name="gui").client_name == "gui"
    assert AsyncDaemonClient().client_name == f"luna-app/{os.getpid()}"


async def test_async_client_unreachable_daemon():
    port = free_port()
    with pytest.raises(DaemonUnavailable, match=f"127.0.0.1:{port}"):
        await AsyncDaemonClient("127.0.0.1", port).ping()


async def test_async_shutdown_sends_the_token(service):
    async with AsyncDaemonClient(*service.address, token="tok-123") as client:
        await client.shutdown()
    assert service.test_handler.calls[-1] == ("shutdown", {"token": "tok-123"})


# ------------------------------------------------------------------------------- health


async def test_socket_health_check(service):
    assert await asyncio.to_thread(check_daemon_health, *service.address)
    assert not await asyncio.to_thread(check_daemon_health, "127.0.0.1", free_port(), 1.0)


async def test_websocket_health_check_returns_status_data_or_offline():
    from websockets.asyncio.server import serve

    async def status_feed(websocket):
        await websocket.send(json.dumps({"type": "status", "data": {"status": "ok", "device": "cpu"}}))
        await websocket.wait_closed()

    async with serve(status_feed, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        assert await check_daemon_health_ws("127.0.0.1", port) == {"status": "ok", "device": "cpu"}
    assert await check_daemon_health_ws("127.0.0.1", free_port(), timeout=1.0) == {"status": "offline"}


# ------------------------------------------------------------------------------ vendoring


def test_the_wire_package_can_be_vendored_without_the_daemon(tmp_path):
    package = tmp_path / "luna_vendored"
    shutil.copytree(REPO / "daemon" / "wire", package, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; import luna_vendored.client as c; import luna_vendored.status, luna_vendored.ready; "
        "bad = [m for m in ('daemon', 'torch', 'websockets', 'platformdirs') if m in sys.modules]; "
        "assert not bad, bad; print(c.DaemonClient.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DaemonClient"


async def test_something_else_on_the_port_is_reported_as_unavailable():
    async def http_server(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(http_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DaemonUnavailable, match=f"127.0.0.1:{port}"):
            await asyncio.to_thread(DaemonClient("127.0.0.1", port, shared_memory=False).ping)
        with pytest.raises(DaemonUnavailable):
            await AsyncDaemonClient("127.0.0.1", port, shared_memory=False).ping()
        assert not await asyncio.to_thread(check_daemon_health, "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
