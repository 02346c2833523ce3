"""The daemon process: wires config, device, models, pools, TCP protocol and status WebSocket.

:class:`DaemonServer` owns the lifecycle of one daemon on one event loop:

1. ``start()``: choose the device (reported with the reason), build the model registry, the VAE
   and CLIP worker pools, the prompt cache and the op handler; bind the protocol port
   (:class:`~daemon.tcp_service.TcpService`) and the status WebSocket; then print exactly one
   line ``LUNA_DAEMON_READY {"host":…,"port":…,"ws_port":…,"pid":…}`` on stdout (port 0 →
   the ports really bound), so supervisors and tests wait on it instead of sleeping. With
   ``load_models = "start"`` the models load in the background right after (a file that fails
   is reported, the daemon keeps serving).
2. ``serve_forever()``: until a signal or the authenticated ``shutdown`` op asks to stop.
3. ``close()``: stop accepting, give in-flight requests a grace period (then they are answered
   SHUTTING_DOWN), close the pools, the WebSocket and the loader.

:func:`run_daemon` is the process entry (used by ``python -m daemon``): logging to stderr and
a rotating file, SIGINT/SIGTERM (SIGBREAK, i.e. Ctrl+Break, on Windows) and on Windows the console
control events (``daemon/console_events.py``: close, logoff, shutdown) → graceful stop; exit
status 0 after a clean stop, 2 for configuration/start-up errors, 3 without a stdout
(``daemon.wire.ready.DaemonExit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from daemon import __version__, console_events
from daemon.auth import load_or_create_token
from daemon.auth import token_path as default_token_path
from daemon.config import ConfigError, DaemonConfig
from daemon.counters import RequestCounters
from daemon.devices import (
    GIB,
    DeviceChoice,
    WorkerRunner,
    choose_device,
    memory_info,
    peak_memory_meter,
    supports_precision,
)
from daemon.model_registry import CLIP_KIND, ModelRegistry
from daemon.ops import DaemonOps
from daemon.pools import PoolSettings, WorkerPool
from daemon.prompt_cache import PromptCache
from daemon.status_ws import StatusWebSocket
from daemon.tcp_service import PortInUseError, PortReservedError, TcpService
from daemon.wire.protocol import PROTOCOL_VERSION, Limits
from daemon.wire.ready import DaemonExit, ReadyInfo
from daemon.wire.status import DaemonStatus, PromptCacheStats, ScalingEvent, StaticFacts


class DaemonStartupError(RuntimeError):
    """The daemon could not start (port in use, bad device …); the message says why."""


def token_path(config: DaemonConfig) -> Path:
    """The configured token file, else ``daemon.token`` in the user config dir."""
    return config.network.token_file or default_token_path()


class DaemonServer:
    """One daemon instance (see module docstring). All methods run on one event loop."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        stdout: IO[str] | None = None,
        limits: Limits | None = None,
        logger: logging.Logger | None = None,
    ):
        self.config = config
        self._stdout = stdout if stdout is not None else sys.stdout
        self._limits = limits or Limits()
        self.log = logger or logging.getLogger("luna.daemon")
        self.device: DeviceChoice | None = None
        self.ready: ReadyInfo | None = None
        self.token: str | None = None
        self._started_at = time.monotonic()
        self._stop_requested: asyncio.Event | None = None
        self.stop_reason = ""
        self._closing = False
        self._closed = False
        self._background: set[asyncio.Task] = set()
        self.registry: ModelRegistry | None = None
        self.vae_pool: WorkerPool | None = None
        self.clip_pool: WorkerPool | None = None
        self.prompt_cache: PromptCache | None = None
        self.ops: DaemonOps | None = None
        self.tcp: TcpService | None = None
        self.counters = RequestCounters()
        self.ws: StatusWebSocket | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> ReadyInfo:
        """Build everything, bind both ports, print the readiness line; see module docstring."""
        config = self.config
        # Kept if a stop was requested before start() (Ctrl+C or a console event while starting).
        self._stop_requested = self._stop_requested or asyncio.Event()
        self._started_at = time.monotonic()
        self.device = choose_device(config.device)
        device = self.device.device
        ok, why = supports_precision(device, config.precision)
        if not ok:
            raise ConfigError("daemon.precision", f"{config.precision} is not supported: {why}")
        self.log.info("luna daemon %s (protocol v%d), pid %d", __version__, PROTOCOL_VERSION, os.getpid())
        self.log.info(
            "device %s (%s; %s), precision %s",
            self.device.label,
            self.device.name,
            self.device.reason,
            config.precision,
        )
        self.log.info("effective config (from %s): %s", config.source, json.dumps(config.to_dict()))

        path = token_path(config)
        try:
            self.token = load_or_create_token(path)
        except OSError as exc:
            if config.network.token_required:
                raise DaemonStartupError(f"cannot create the token file {path}: {exc}") from None
            self.log.warning("no token file (%s); the shutdown op is disabled", exc)
        self.log.info(
            "token file: %s (%s)",
            path,
            "required for every client" if config.network.token_required else "required for shutdown only",
        )

        self.registry = ModelRegistry(
            config.models, device=device, precision=config.precision, on_loaded=self._model_loaded
        )
        self.ws = StatusWebSocket(
            self.status_snapshot,
            host=config.network.host,
            port=config.network.ws_port,
            interval=config.status_interval,
            allowed_origins=config.network.allowed_origins,
            token=self.token if config.network.token_required else None,
        )
        self.vae_pool = self._make_pool("vae")
        self.clip_pool = self._make_pool("clip")
        self.prompt_cache = PromptCache(config.prompt_cache_size)
        self.ops = DaemonOps(
            registry=self.registry,
            vae_pool=self.vae_pool,
            clip_pool=self.clip_pool,
            prompt_cache=self.prompt_cache,
            status=self.status,
            request_shutdown=self.request_shutdown,
            shutdown_token=self.token,
        )
        self.tcp = TcpService(
            self.ops,
            host=config.network.host,
            port=config.network.port,
            token=self.token if config.network.token_required else None,
            limits=self._limits,
            counters=self.counters,
        )
        try:
            host, port = await self.tcp.start()
        except (PortInUseError, PortReservedError) as exc:
            await self._abort_start()
            raise DaemonStartupError(f"cannot listen for the protocol: {exc.strerror or exc}") from None
        except (OSError, ValueError) as exc:
            await self._abort_start()
            raise DaemonStartupError(
                f"cannot listen on {config.network.host}:{config.network.port}: {exc}"
            ) from None
        try:
            _, ws_port = await self.ws.start()
        except OSError as exc:  # PortInUseError / PortReservedError name the port and the cause
            await self._abort_start()
            raise DaemonStartupError(
                f"cannot listen for the status WebSocket: {exc.strerror or exc}"
            ) from None
        await self.vae_pool.start()
        await self.clip_pool.start()
        if config.load_models == "start":
            self._spawn(self._load_models_at_start(), "load-models")
        self.ready = ReadyInfo(host=host, port=port, ws_port=ws_port, pid=os.getpid())
        self._stdout.write(self.ready.line() + "\n")
        self._stdout.flush()
        self.log.info("ready: protocol %s:%d, status ws://%s:%d", host, port, host, ws_port)
        return self.ready

    async def serve_forever(self) -> str:
        """Wait until a stop is requested; returns the reason."""
        assert self._stop_requested is not None, "start() first"
        await self._stop_requested.wait()
        return self.stop_reason

    def request_shutdown(self, reason: str = "requested") -> None:
        """Ask the daemon to stop (idempotent; safe from signal handlers via the loop)."""
        if self._stop_requested is None:  # before start(): start() then serve_forever() return at once
            self._stop_requested = asyncio.Event()
        if not self._stop_requested.is_set():
            self.stop_reason = reason
            self.log.info("stopping: %s", reason)
            self._stop_requested.set()

    async def close(self, grace: float | None = None) -> None:
        """Graceful stop: no new work, in-flight gets ``grace`` seconds (default: the config's
        ``shutdown_grace``) in all, then everything closes."""
        if self._closed:
            return
        self._closing = True
        grace = self.config.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace  # one grace for the whole stop, not one per stage
        if self.tcp is not None:
            # Stops accepting; in-flight requests finish or are answered SHUTTING_DOWN.
            await self.tcp.close(grace=grace)
        for pool in (self.vae_pool, self.clip_pool):
            if pool is not None:
                await pool.close(grace=max(0.0, deadline - time.monotonic()))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        if self.registry is not None:
            await self.registry.aclose()
        self._closed = True
        self.log.info("stopped")

    async def _abort_start(self) -> None:
        self._closing = True
        if self.tcp is not None:
            await self.tcp.close(grace=0)
        if self.ws is not None:
            await self.ws.close()
        if self.registry is not None:
            await self.registry.aclose()
        self._closed = True

    # ------------------------------------------------------------------ pieces

    def _make_pool(self, name: str) -> WorkerPool:
        assert self.device is not None
        device = self.device.device
        return WorkerPool(
            PoolSettings.from_config(name, self.config),
            free_memory=lambda: memory_info(device).free_bytes,
            runner_factory=lambda: WorkerRunner(device),
            on_scaling=self._scaled,
            footprint_meter=peak_memory_meter(device) if device.type == "cuda" else None,
        )

    def _scaled(self, event: ScalingEvent) -> None:
        if self.ws is not None:
            self.ws.publish_scaling(event)

    def _model_loaded(self, kind: str, model: Any) -> None:
        # Until a job measures the real per-worker peak, the weights' size is the prior.
        pool = self.clip_pool if kind == CLIP_KIND else self.vae_pool
        if pool is not None:
            pool.set_footprint_prior(int(getattr(model, "footprint_bytes", 0)))

    async def _load_models_at_start(self) -> None:
        assert self.registry is not None
        errors = await self.registry.load_all()
        for message in errors:
            self.log.error("start-up load failed (the daemon keeps running): %s", message)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ status

    def status_snapshot(self, *, full: bool = True) -> DaemonStatus:
        """The status now: seed fields, sample time and live extras; with ``full`` also the static
        facts (sent on connect and in ``get_status`` only, so the 1 Hz message stays small)."""
        assert self.device is not None and self.vae_pool is not None and self.clip_pool is not None
        memory = memory_info(self.device.device)
        config = self.config
        counters = self.counters
        static = None
        if full:
            static = StaticFacts(
                pid=os.getpid(),
                protocol_version=PROTOCOL_VERSION,
                protocol_port=self.ready.port if self.ready else None,
                ws_port=self.ready.ws_port if self.ready else None,
                device_name=self.device.name,
                memory_source=memory.source,
                config=config.to_dict(),
            )
        return DaemonStatus(
            status="shutting_down" if self._closing or self._stop_requested_set() else "ok",
            version=f"{__version__}-{'dynamic' if config.scaling.dynamic else 'static'}",
            device=self.device.label,
            precision=config.precision,
            uptime_seconds=round(time.monotonic() - self._started_at, 1),
            total_requests=counters.work_requests,
            vram_used_gb=round(memory.used_bytes / GIB, 3),
            vram_total_gb=round(memory.total_bytes / GIB, 3),
            vae_pool=self.vae_pool.snapshot(),
            clip_pool=self.clip_pool.snapshot(),
            sampled_at=round(time.time(), 3),
            vram_free_gb=round(memory.free_bytes / GIB, 3),
            models=self.registry.summary() if self.registry else {},
            prompt_cache=PromptCacheStats(**self.prompt_cache.stats())
            if self.prompt_cache
            else PromptCacheStats(),
            traffic=counters.traffic(),
            ws_clients=self.ws.client_count if self.ws else 0,
            static=static,
        )

    def status(self) -> dict[str, Any]:
        """The full status ``data`` (seed fields first); the ``status`` op's result."""
        return self.status_snapshot(full=True).to_data()

    def _stop_requested_set(self) -> bool:
        return self._stop_requested is not None and self._stop_requested.is_set()


# ---------------------------------------------------------------------------------------------
# Process entry


def run_daemon(config: DaemonConfig, *, stdout: IO[str] | None = None) -> int:
    """Run a daemon in this process until stopped; returns the exit status."""
    from daemon.logging_setup import configure_logging, log_file_name

    logging_handle = configure_logging(config.log_level, file_name=log_file_name(config.network.port))
    log = logging.getLogger("luna.daemon")
    if logging_handle.log_file:
        log.info("logging to %s", logging_handle.log_file)
    code: int = DaemonExit.CRASHED
    try:
        if (stdout if stdout is not None else sys.stdout) is None:
            code = _refuse_without_stdout(log)
        else:
            code = asyncio.run(_run_with_signals(config, stdout))
    except (ConfigError, DaemonStartupError) as exc:
        log.error("%s", exc)
        print(f"luna-daemon: {exc}", file=sys.stderr)
        code = DaemonExit.START_FAILED
    except KeyboardInterrupt:  # Ctrl+C before the handlers were installed
        code = DaemonExit.OK
    finally:
        stuck = _threads_blocking_exit(EXIT_JOIN_TIMEOUT)
        if stuck:
            log.warning(
                "exiting with %d model call(s) still running (%s); their results are dropped",
                len(stuck),
                ", ".join(thread.name for thread in stuck),
            )
        logging_handle.close()
    if stuck:
        # Python joins every executor thread at exit, so a torch call that outlives the grace
        # would keep the process alive until it finished (tens of seconds for a large decode on CPU) and a supervisor
        # would kill it. Everything is flushed and closed by now; nothing is left to lose.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # pythonw / a windowed executable has neither
                stream.flush()
        os._exit(code)
    return code


#: Seconds idle worker threads get to end by themselves after the daemon closed.
EXIT_JOIN_TIMEOUT = 0.5


def _threads_blocking_exit(timeout: float) -> list[threading.Thread]:
    """Threads that would keep the interpreter from exiting (non-daemon, still alive) after
    ``timeout`` seconds in all: pool workers or a model loader still inside a call."""
    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    pending = [t for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in pending if thread.is_alive()]


def _refuse_without_stdout(log: logging.Logger) -> int:
    """``pythonw`` / a windowed executable: no stdout for the READY line, so no supervisor could
    ever see the daemon ready. Refuse before binding anything (the reason went to the log file,
    and to stderr when there is one)."""
    log.error(
        "no stdout to print the %s line on (started with pythonw or as a windowed executable?): "
        "run the console executable (python.exe -m daemon / luna-daemon.exe) with stdout piped",
        "LUNA_DAEMON_READY",
    )
    return DaemonExit.NO_STDOUT


async def _run_with_signals(config: DaemonConfig, stdout: IO[str] | None) -> int:
    server = DaemonServer(config, stdout=stdout)
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    previous: dict[int, Any] = {}

    def stop_from(name: str) -> None:
        server.request_shutdown(f"signal {name}")

    names = ["SIGINT", "SIGTERM"] + (["SIGBREAK"] if sys.platform == "win32" else [])
    for name in names:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop_from, name)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):
            # Windows: no loop signal handlers; a plain handler hops onto the loop thread.
            previous[signum] = signal.signal(
                signum, lambda _s, _f, n=name: loop.call_soon_threadsafe(stop_from, n)
            )
    # Windows: console close / logoff / shutdown (and Ctrl+C/Break first) stop gracefully too.
    console = console_events.install_stop_handler(loop, server.request_shutdown)
    try:
        await server.start()
        await server.serve_forever()
    finally:
        await server.close()
        if console is not None:
            console_handler, remove_console_handler = console
            console_handler.stopped()  # a handler waiting on a close event may return: Windows ends us then
            remove_console_handler()
        for signum in installed:
            loop.remove_signal_handler(signum)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return DaemonExit.OK
