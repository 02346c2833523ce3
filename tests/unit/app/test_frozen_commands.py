"""Frozen (PyInstaller, build.spec) command lines: the bundle's own executables, never `python -m`.

``sys.frozen`` / ``sys._MEIPASS`` / ``sys.executable`` are set the way PyInstaller's bootloader
sets them, over a fake bundle folder; the real bundle is exercised by tests/smoke/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.narrates.llm import embedded
from app.narrates.llm.embedded import EmbeddedLlm, check_runtime, default_gguf, server_command
from app.narrates.llm.errors import EmbeddedModelMissing, EmbeddedRuntimeMissing
from app.paths import bundled_executable, is_frozen, resource_path, workflows_dir
from app.services.daemon_supervisor import daemon_command

EXE = ".exe" if sys.platform == "win32" else ""


@pytest.fixture
def bundle(tmp_path, monkeypatch) -> Path:
    """A fake one-folder bundle: Luna, luna-daemon, luna-llm-server and _internal/ (sys._MEIPASS)."""
    root = tmp_path / "Luna"
    internal = root / "_internal"
    (internal / "resources" / "models").mkdir(parents=True)
    (internal / "workflows").mkdir()
    for name in ("Luna", "luna-daemon", "luna-llm-server"):
        (root / f"{name}{EXE}").write_bytes(b"")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(internal), raising=False)
    monkeypatch.setattr(sys, "executable", str(root / f"Luna{EXE}"))
    return root


def test_from_source_nothing_is_frozen():
    assert not is_frozen()
    assert server_command("/py") == ("/py", "-m", "llama_cpp.server")
    argv, _env = daemon_command(["--port", "0"])
    assert argv[1:] == ["-m", "daemon", "--port", "0"]


def test_frozen_the_supervisor_starts_the_bundled_daemon_executable(bundle):
    argv, env = daemon_command(["--port", "0"])
    assert argv == [str(bundle / f"luna-daemon{EXE}"), "--port", "0"]
    assert env == {}


def test_frozen_the_embedded_llm_runs_the_bundled_server_with_the_same_arguments(bundle, tmp_path):
    llm = EmbeddedLlm(tmp_path / "mine.gguf", n_threads=2, python="/ignored/python")
    argv = llm.argv(tmp_path / "mine.gguf", 5555)
    assert argv[0] == str(bundle / f"luna-llm-server{EXE}")
    assert argv[1:3] == ("--model", str(tmp_path / "mine.gguf"))
    assert "-m" not in argv


def test_frozen_resources_workflows_and_the_starter_model_come_from_the_bundle(bundle):
    internal = bundle / "_internal"
    assert resource_path("clip", "x") == internal / "resources" / "clip" / "x"
    assert workflows_dir() == internal / "workflows"
    assert bundled_executable("luna-daemon") == bundle / f"luna-daemon{EXE}"
    with pytest.raises(EmbeddedModelMissing, match="no starter model.*make bundle"):
        default_gguf()
    model = internal / "resources" / "models" / embedded.STARTER_FILE
    model.write_bytes(b"GGUF")
    assert default_gguf() == model


def test_frozen_runtime_check_needs_the_server_executable_not_llama_cpp(bundle):
    check_runtime()  # the app's own archive has no llama_cpp: the executable is what counts
    (bundle / f"luna-llm-server{EXE}").unlink()
    with pytest.raises(EmbeddedRuntimeMissing, match="no embedded LLM server.*make bundle"):
        check_runtime()
