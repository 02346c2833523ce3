"""Helpers for daemon server tests: real daemons on port 0 (in-process or subprocess), tiny
real-layout model files, and a WebSocket recorder that waits on messages instead of sleeping.

Used from test coroutines on the test's event loop; subprocess daemons are started with
asyncio's subprocess support and always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from daemon.config import build_config
from daemon.server import DaemonServer
from daemon.wire.ready import ReadyInfo, parse_ready_line
from tests.helpers.tiny_models import make_tiny_clip, make_tiny_vae

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_vae_file(directory: Path, name: str = "tiny_vae.safetensors", seed: int = 0) -> Path:
    """A real-layout (LDM keys) random-weight SD VAE with narrow channels, saved as safetensors."""
    return make_tiny_vae(directory / name, "ldm", seed=seed).path


def tiny_clip_files(directory: Path, *, sdxl: bool = False, seed: int = 0) -> dict[str, Path]:
    """Tiny real-layout CLIP-L (SD1.5) or CLIP-L + CLIP-G (SDXL) text-encoder files."""
    files = {"clip_l": make_tiny_clip(directory / f"tiny_clip_l_{seed}.safetensors", "l", seed=seed).path}
    if sdxl:
        files["clip_g"] = make_tiny_clip(
            directory / f"tiny_clip_g_{seed}.safetensors", "g", layout="openclip", seed=seed + 1
        ).path
    return files


def daemon_config(**overrides: Any):
    """A test config: both ports 0, CPU, fast status and scaling clocks, then ``overrides``."""
    values: dict[str, Any] = {
        "network.port": 0,
        "network.ws_port": 0,
        "daemon.device": "cpu",
        "daemon.precision": "fp32",
        "daemon.status_interval": 0.05,
        "scaling.check_interval": 0.01,
        "scaling.safety_margin_gb": 0.0,
    }
    values.update(overrides)
    return build_config(values, source="test")


@contextlib.asynccontextmanager
async def running_daemon(config) -> AsyncIterator[DaemonServer]:
    """An in-process daemon on this loop; its readiness line is checked, it is always closed."""
    out = io.StringIO()
    server = DaemonServer(config, stdout=out)
    ready = await server.start()
    try:
        assert parse_ready_line(out.getvalue().strip()) == ready
        yield server
    finally:
        await server.close(grace=5.0)


class WsRecorder:
    """Collects every message of one status WebSocket connection into a queue."""

    def __init__(self, connection: ClientConnection):
        self.connection = connection
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.seen: list[dict] = []
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.connection:
                message = json.loads(raw)
                self.seen.append(message)
                self.messages.put_nowait(message)

    async def next(
        self, kind: str | None = None, where: Callable[[dict], bool] | None = None, timeout: float = 10.0
    ) -> dict:
        """The next message of ``kind`` whose data satisfies ``where`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if kind is not None and message["type"] != kind:
                    continue
                if where is not None and not where(message["data"]):
                    continue
                return message

    async def close(self) -> None:
        await self.connection.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def ws_recorder(host: str, port: int) -> AsyncIterator[WsRecorder]:
    connection = await connect(f"ws://{host}:{port}")
    recorder = WsRecorder(connection)
    try:
        yield recorder
    finally:
        await recorder.close()


@contextlib.asynccontextmanager
async def daemon_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, module: str = "daemon"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, ReadyInfo]]:
    """``python -m daemon ARGS`` (or another ``module`` wrapping it) until its readiness line;
    killed if still running at exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=str(REPO_ROOT),
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ready = await wait_ready(proc, timeout)
        yield proc, ready
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def wait_ready(proc: asyncio.subprocess.Process, timeout: float) -> ReadyInfo:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stdout.readline()
            if not line:
                stderr = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"daemon exited before readiness: {stderr.decode()[-2000:]}")
            ready = parse_ready_line(line.decode().strip())
            if ready is not None:
                return ready


async def run_daemon_to_exit(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``python -m daemon ARGS`` expecting it to exit by itself: (code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        cwd=str(REPO_ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    return proc.returncode, out.decode(), err.decode()
