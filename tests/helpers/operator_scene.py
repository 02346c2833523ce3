"""A realistic operator scene for GUI tests, screenshots and benchmarks.

Builds operator settings for a real daemon child on port 0 (CPU, fp32, tiny random-weight VAE
and CLIP-L files in the real key layouts) and ComfyUI instances served by the faithful fake
ComfyUI (plus, optionally, one instance nobody serves), and drives load: VAE decode bursts that
make the daemon's VAE pool scale up, CLIP encodes that exercise the prompt cache, and renders
that stream progress. Everything runs on the caller's asyncio loop (the qasync loop in GUI
tests); nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.bootstrap import BuildOptions
from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.router import RouterSettings
from app.services.daemon_supervisor import SupervisorOptions
from app.services.settings import DaemonSettings, ModelSet, OperatorSettings
from daemon.wire.client import AsyncDaemonClient
from daemon.wire.ready import ReadyInfo
from tests.helpers.daemon_fixtures import tiny_clip_files, tiny_vae_file
from tests.helpers.fake_comfyui import FakeComfyUI

GIB = 1024**3
#: Daemon flags for a lively dashboard: instant scale-up, quick idle scale-down, 4 Hz status.
LIVELY_DAEMON_ARGS = ("--scale-up-delay", "0", "--idle-timeout", "4", "--status-interval", "0.25")


def free_port() -> int:
    """A port nothing listens on (for an instance that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Scene:
    """What a scene built: the settings, the build options and the fake servers."""

    settings: OperatorSettings
    options: BuildOptions
    fakes: list[FakeComfyUI] = field(default_factory=list)


def daemon_settings(model_dir: Path, *, max_vae_workers: int = 3) -> DaemonSettings:
    vae = tiny_vae_file(model_dir)
    clip = tiny_clip_files(model_dir)["clip_l"]
    return DaemonSettings(
        port=0,
        ws_port=0,
        device="cpu",
        precision="fp32",
        max_vae_workers=max_vae_workers,
        model_sets=(ModelSet("default", vae=str(vae), clip_l=str(clip)),),
    )


@contextlib.asynccontextmanager
async def operator_scene(
    tmp_dir: Path,
    *,
    instances: int = 2,
    with_down_instance: bool = True,
    render_delay: float = 0.5,
    daemon_args: tuple[str, ...] = LIVELY_DAEMON_ARGS,
    vram_tick_ms: int = 250,
    health_interval: float = 0.5,
) -> AsyncIterator[Scene]:
    """Fake ComfyUI instances started, settings pointing at them; servers stopped at exit."""
    styles = ("anime", "realistic", "semi_realistic", "artistic")
    fakes = [
        FakeComfyUI(render_delay=render_delay, vram_total=24 * GIB, vram_free=(20 - 4 * i) * GIB)
        for i in range(instances)
    ]
    for fake in fakes:
        await fake.start()
    try:
        configs = [
            InstanceConfig(f"comfyui-{styles[i]}", fake.url, (styles[i],)) for i, fake in enumerate(fakes)
        ]
        if with_down_instance:
            configs.append(
                InstanceConfig("comfyui-offline", f"http://127.0.0.1:{free_port()}", ("artistic",))
            )
        settings = OperatorSettings(
            daemon=daemon_settings(tmp_dir),
            instances=InstancesConfig(tuple(configs), default_style="anime"),
        )
        options = BuildOptions(
            supervisor=SupervisorOptions(ready_timeout=60, extra_args=daemon_args),
            router=RouterSettings(health_interval=health_interval, probe_timeout=1.0, health_backoff_max=1.0),
            config_dir=tmp_dir / "config",
            remember_window=False,
            vram_tick_ms=vram_tick_ms,
        )
        yield Scene(settings, options, fakes)
    finally:
        for fake in fakes:
            await fake.stop()


def latent(size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 4, size, size)).astype(np.float32)


async def vae_burst(ready: ReadyInfo, *, clients: int = 8, rounds: int = 3, size: int = 16) -> None:
    """Concurrent VAE decodes: more than one request waits, so the VAE pool scales up."""
    pool = [AsyncDaemonClient(ready.host, ready.port, shared_memory=False) for _ in range(clients)]
    try:
        await pool[0].vae_decode(latent(size=8))  # the model is loaded before the burst

        async def run(client: AsyncDaemonClient, seed: int) -> None:
            for i in range(rounds):
                await client.vae_decode(latent(size=size, seed=seed * 10 + i))

        await asyncio.gather(*(run(client, index) for index, client in enumerate(pool)))
    finally:
        for client in pool:
            await client.close()


async def clip_prompts(ready: ReadyInfo, prompts: tuple[str, ...]) -> None:
    """CLIP encodes (repeats hit the daemon's prompt cache)."""
    client = AsyncDaemonClient(ready.host, ready.port, shared_memory=False)
    try:
        for text in prompts:
            await client.clip_encode(text)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def fake_comfyui_process(render_delay: float = 0.0) -> AsyncIterator[str]:
    """A fake ComfyUI in its own process (its CPU stays out of the measured one); yields its URL."""
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.fake_comfyui",
        "--render-delay",
        str(render_delay),
        cwd=str(Path(__file__).resolve().parents[2]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line and line[0] == "FAKE_COMFYUI_READY", line
        yield line[1]
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
