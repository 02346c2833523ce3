"""The operator window as a process: ``luna gui --self-test``, and a SIGKILLed window's daemon child."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import psutil
import pytest

from tests.helpers.daemon_fixtures import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.gui]


def _env(luna_home) -> dict[str, str]:
    return {
        **os.environ,
        "LUNA_HOME": str(luna_home),
        "QT_QPA_PLATFORM": "offscreen",
        "PYTHONPATH": str(REPO_ROOT),
    }


async def test_self_test_starts_the_daemon_checks_every_panel_and_exits_0(luna_home):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "gui",
        "--self-test",
        "--self-test-timeout",
        "60",
        cwd=str(REPO_ROOT),
        env=_env(luna_home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()[-3000:]
    for step in (
        "daemon child started and ready",
        "first status over the WebSocket",
        "VRAM graph",
        "settings dialog",
        "daemon log pane",
        "daemon stopped",
    ):
        assert f"self-test: ok   {step}" in text
    assert text.rstrip().endswith("self-test: passed")
    assert "Traceback" not in err.decode()
    # It never writes the operator's own settings or window state.
    assert not (luna_home / "config" / "operator.json").exists()
    assert not (luna_home / "config" / "ui_state.json").exists()


async def test_self_test_names_the_failed_check_and_exits_1(luna_home):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "gui",
        "--self-test",
        "--self-test-timeout",
        "60",
        cwd=str(REPO_ROOT),
        env={**_env(luna_home), "LUNA_SELF_TEST_DAEMON_ARGS": "--precision int8"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1, out.decode() + err.decode()[-2000:]
    assert "self-test: FAILED daemon child started and ready:" in out.decode()
    assert "int8" in out.decode()  # the daemon's own complaint is shown


async def test_killing_the_window_process_takes_the_daemon_child_with_it(luna_home):
    config = luna_home / "config"
    config.mkdir(parents=True)
    (config / "operator.json").write_text(
        json.dumps({"daemon": {"port": 0, "ws_port": 0, "device": "cpu", "precision": "fp32"}})
    )
    gui = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "gui",
        cwd=str(REPO_ROOT),
        env=_env(luna_home),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        pid = None
        async with asyncio.timeout(90):
            while pid is None:
                line = (await gui.stderr.readline()).decode()
                assert line, "the window process ended before its daemon was up"
                match = re.search(r"daemon running \(pid (\d+)", line)
                pid = int(match.group(1)) if match else None
        assert psutil.Process(pid).ppid() == gui.pid
        gui.kill()  # SIGKILL: the window gets no chance to stop its daemon
        await gui.wait()
        try:
            await asyncio.to_thread(psutil.Process(pid).wait, 30)
        except psutil.NoSuchProcess:
            pass
        assert not psutil.pid_exists(pid)
    finally:
        if gui.returncode is None:
            gui.kill()
            await gui.wait()
