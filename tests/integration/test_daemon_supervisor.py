"""The daemon supervisor against real ``python -m daemon`` children on port 0 (plain asyncio).

Every wait is on a supervisor state, a process exit or a readiness line; no sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace

import psutil
import pytest

from app.services.daemon_supervisor import (
    DaemonSupervisor,
    LogLine,
    Phase,
    SupervisorError,
    SupervisorOptions,
    SupervisorState,
    daemon_command,
)
from app.services.settings import DaemonSettings
from daemon.wire.client import AsyncDaemonClient
from tests.helpers.daemon_fixtures import REPO_ROOT, daemon_process

pytestmark = pytest.mark.integration

FAST = SupervisorOptions(
    ready_timeout=60.0,
    stop_grace=10.0,
    max_restarts=2,
    restart_backoff=0.05,
    restart_backoff_max=0.1,
    extra_args=("--status-interval", "0.1"),
)
CPU = DaemonSettings(port=0, ws_port=0, device="cpu", precision="fp32")


class StateLog:
    """Records supervisor states and lets a test await the first one matching a predicate."""

    def __init__(self, supervisor: DaemonSupervisor):
        self.states: list[SupervisorState] = []
        self.lines: list[LogLine] = []
        self._changed = asyncio.Event()
        supervisor.add_listener(self._on_item)

    def _on_item(self, item: SupervisorState | LogLine) -> None:
        if isinstance(item, LogLine):
            self.lines.append(item)
            return
        self.states.append(item)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[SupervisorState], bool], timeout: float = 60.0):
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for state in self.states[seen:]:
                    if predicate(state):
                        return state
                seen = len(self.states)
                self._changed.clear()
                await self._changed.wait()


async def wait_gone(pid: int, timeout: float = 30.0) -> None:
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    await asyncio.to_thread(process.wait, timeout)


def test_daemon_command_runs_this_interpreter_with_module_daemon():
    argv, env = daemon_command(["--port", "0"])
    assert argv[1:] == ["-m", "daemon", "--port", "0"]
    if sys.platform != "win32":
        assert argv[0] == sys.executable and env == {}


async def test_start_reports_ready_streams_output_and_stop_leaves_no_child(tmp_path):
    supervisor = DaemonSupervisor(CPU, options=FAST, config_dir=tmp_path)
    log = StateLog(supervisor)
    await supervisor.start()
    ready = await supervisor.wait_up(60)
    assert supervisor.state.phase is Phase.RUNNING
    assert ready.port > 0 and ready.ws_port > 0
    # The READY pid is the daemon itself (no launcher process in between on Linux).
    assert ready.pid == supervisor.child_pid
    assert any("LUNA_DAEMON_READY" in line.text for line in log.lines if line.stream == "stdout")
    assert (tmp_path / "daemon.toml").read_text().count("[scaling]") == 1
    client = AsyncDaemonClient(ready.host, ready.port, shared_memory=False)
    try:
        status = await client.status()
    finally:
        await client.close()
    assert status["config"]["device"] == "cpu" and status["config"]["precision"] == "fp32"

    await supervisor.stop()
    assert supervisor.state.phase is Phase.STOPPED
    assert not psutil.pid_exists(ready.pid) or psutil.Process(ready.pid).status() == psutil.STATUS_ZOMBIE
    # Stopped through the shutdown op, not a signal: the daemon logs why it stopped.
    assert any("shutdown" in line.text for line in log.lines if line.stream == "stderr")
    assert [s.phase for s in log.states][:2] == [Phase.STARTING, Phase.RUNNING]


@pytest.mark.expect_log_warnings
async def test_crash_is_restarted_then_the_supervisor_gives_up_after_the_cap(tmp_path):
    supervisor = DaemonSupervisor(CPU, options=replace(FAST, max_restarts=1), config_dir=tmp_path)
    log = StateLog(supervisor)
    await supervisor.start()
    first = await supervisor.wait_up(60)
    os.kill(first.pid, signal.SIGKILL)

    restarting = await log.wait_for(lambda s: s.phase is Phase.RESTARTING)
    assert "restart 1 of 1" in restarting.detail
    second = await log.wait_for(lambda s: s.phase is Phase.RUNNING and s.ready.pid != first.pid)
    os.kill(second.ready.pid, signal.SIGKILL)

    gave_up = await log.wait_for(lambda s: s.phase is Phase.GAVE_UP)
    assert "restart cap" in gave_up.detail
    assert supervisor.child_pid is None
    await wait_gone(second.ready.pid)
    await supervisor.stop()


@pytest.mark.expect_log_warnings
async def test_a_daemon_that_refuses_to_start_is_not_restarted_and_the_reason_is_shown(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = replace(CPU, ws_port=taken.getsockname()[1])
        supervisor = DaemonSupervisor(settings, options=FAST, config_dir=tmp_path)
        log = StateLog(supervisor)
        await supervisor.start()
        gave_up = await log.wait_for(lambda s: s.phase is Phase.GAVE_UP)
    assert "refused to start" in gave_up.detail
    assert "status WebSocket" in gave_up.detail  # the daemon's own stderr line names the port
    assert gave_up.last_exit == 2
    assert not any(s.phase is Phase.RESTARTING for s in log.states)
    await supervisor.stop()


async def test_attaches_to_a_daemon_already_on_the_port_and_quitting_leaves_it_running(tmp_path):
    async with daemon_process("--port", "0", "--ws-port", "0", "--device", "cpu") as (proc, ready):
        settings = replace(CPU, port=ready.port, ws_port=ready.port + 1)
        supervisor = DaemonSupervisor(settings, options=FAST, config_dir=tmp_path)
        state = await supervisor.start()
        assert state.phase is Phase.ATTACHED
        assert state.ready.ws_port == ready.ws_port  # read from the daemon, not the setting
        assert state.ready.pid == proc.pid
        assert "attached" in state.describe()
        assert supervisor.child_pid is None

        await supervisor.aclose()  # app quit: detach only
        assert proc.returncode is None
        client = AsyncDaemonClient(ready.host, ready.port, shared_memory=False)
        try:
            assert (await client.status())["status"] == "ok"
        finally:
            await client.close()

        # The Stop button on an attached daemon shuts it down with the token.
        again = DaemonSupervisor(settings, options=FAST, config_dir=tmp_path)
        assert (await again.start()).phase is Phase.ATTACHED
        await again.stop()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_killed_supervisor_process_takes_its_daemon_child_with_it(tmp_path):
    script = (
        "import asyncio, sys\n"
        "from app.services.daemon_supervisor import DaemonSupervisor, SupervisorOptions\n"
        "from app.services.settings import DaemonSettings\n"
        "async def main():\n"
        "    s = DaemonSupervisor(DaemonSettings(port=0, ws_port=0, device='cpu', precision='fp32'),\n"
        "                         options=SupervisorOptions(ready_timeout=60), config_dir=__import__('pathlib').Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    ready = await s.wait_up(60)\n"
        "    print('DAEMON', ready.pid, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(tmp_path),
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            line = await parent.stdout.readline()
        assert line.startswith(b"DAEMON "), line
        daemon_pid = int(line.split()[1])
        assert psutil.Process(daemon_pid).ppid() == parent.pid
        parent.kill()  # SIGKILL: no cleanup code runs in the supervisor process
        await parent.wait()
        await wait_gone(daemon_pid)
        assert not psutil.pid_exists(daemon_pid)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_port_held_by_another_program_is_reported_not_attached(tmp_path):
    async def not_a_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_a_daemon, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        supervisor = DaemonSupervisor(replace(CPU, port=port), options=FAST, config_dir=tmp_path)
        with pytest.raises(SupervisorError) as caught:
            await supervisor.start()
        assert f"port {port} on 127.0.0.1 is in use but does not answer as a Luna daemon" in str(caught.value)
        assert supervisor.state.phase is Phase.STOPPED and supervisor.child_pid is None
    finally:
        server.close()
        await server.wait_closed()
