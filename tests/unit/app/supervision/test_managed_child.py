"""ManagedChild against real child processes (tests/helpers/child_script.py): readiness, output
draining, crash → restart, restart cap → GaveUp, graceful / terminate / kill stop, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.supervision.child import (
    ChildGaveUp,
    ChildSpec,
    ChildState,
    ChildStopped,
    Exited,
    GaveUp,
    ManagedChild,
    Output,
    Ready,
    ReadyWhenLine,
    ReadyWhenProbe,
    Restarting,
    RestartPolicy,
    Starting,
    Stopped,
    StopPolicy,
    popen_options,
)
from app.supervision.orphans import WINDOWS_CREATION_FLAGS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="the child script uses POSIX signals"),
]

REPO = Path(__file__).resolve().parents[4]
FAST_RESTART = RestartPolicy(max_restarts=2, backoff_initial_s=0.01, backoff_max_s=0.05)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spec(*args: str, ready_timeout_s: float = 20.0) -> ChildSpec:
    return ChildSpec(
        name="test-child",
        argv=(sys.executable, "-m", "tests.helpers.child_script", *args),
        env=child_env(),
        cwd=REPO,
        ready_timeout_s=ready_timeout_s,
    )


def parse_ready(line: str) -> int | None:
    return int(line.split("pid=")[1]) if line.startswith("CHILD_READY") else None


READY_LINE = ReadyWhenLine(parse_ready)


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def gone(pid: int, timeout: float = 10.0) -> bool:
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    try:
        process.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    return True


async def test_ready_line_reports_the_parsed_info_and_the_output_is_kept():
    recorder = Recorder()
    child = ManagedChild(spec("serve"), ready=READY_LINE, on_event=recorder)
    ready = await child.start()
    try:
        assert isinstance(ready, Ready) and ready.info == ready.pid == child.pid
        assert child.state is ChildState.READY and child.ready_info == ready.pid
        assert any(line.startswith("CHILD_READY") for line in child.output)
        assert [type(e) for e in recorder.events[:1]] == [Starting]
        assert any(isinstance(e, Output) and e.stream == "stdout" for e in recorder.events)
    finally:
        await child.stop()
    assert child.state is ChildState.STOPPED
    assert gone(ready.pid)
    exited = recorder.of(Exited)
    assert len(exited) == 1 and exited[0].expected and exited[0].returncode == 0
    assert "terminated" in child.output  # SIGTERM reached it: there was no graceful step
    assert isinstance(recorder.events[-1], Stopped)


async def test_probe_readiness_waits_until_the_probe_answers():
    attempts = []

    async def probe():
        attempts.append(1)
        return "up" if len(attempts) >= 3 else None

    child = ManagedChild(spec("serve"), ready=ReadyWhenProbe(probe, interval_s=0.01))
    async with child:
        assert child.ready_info == "up" and len(attempts) == 3


async def test_a_flooding_child_is_drained_and_never_blocks_on_a_full_pipe():
    child = ManagedChild(spec("flood", "2000000"), ready=READY_LINE, output_lines=50)
    ready = await asyncio.wait_for(child.start(), 60)
    await child.stop()
    assert ready.pid
    assert len(child.output) == 50  # the ring buffer is bounded


async def test_a_crash_before_ready_is_restarted_and_then_ready(tmp_path):
    recorder = Recorder()
    child = ManagedChild(
        spec("crash-once", str(tmp_path / "marker")),
        ready=READY_LINE,
        restart=FAST_RESTART,
        on_event=recorder,
    )
    async with child:
        assert child.state is ChildState.READY
    restarting = recorder.of(Restarting)
    assert len(restarting) == 1 and restarting[0].attempt == 1
    assert "before it was ready" in restarting[0].reason
    assert recorder.of(Exited)[0].returncode == 3
    assert len(recorder.of(Starting)) == 2


@pytest.mark.expect_log_warnings
async def test_a_crash_after_ready_is_restarted_until_the_cap_then_gives_up_with_the_last_output():
    recorder = Recorder()
    child = ManagedChild(
        spec("crash-after-ready", "4"), ready=READY_LINE, restart=FAST_RESTART, on_event=recorder
    )
    await child.start()  # the first run gets ready
    async for event in child.events():
        if isinstance(event, GaveUp):
            break
    gave_up = child.gave_up
    assert gave_up is not None and child.state is ChildState.GAVE_UP
    assert "exited with code 4" in gave_up.reason and "restart cap" in gave_up.reason
    assert "dying" in gave_up.last_output
    assert [e.attempt for e in recorder.of(Restarting)] == [1, 2]
    assert len(recorder.of(Starting)) == 3
    with pytest.raises(ChildGaveUp, match="exited with code 4"):
        await child.wait_ready()


@pytest.mark.expect_log_warnings
async def test_start_raises_gave_up_when_the_child_never_gets_ready():
    child = ManagedChild(
        spec("crash", "7"), ready=READY_LINE, restart=RestartPolicy(max_restarts=1, backoff_initial_s=0.01)
    )
    with pytest.raises(ChildGaveUp) as caught:
        await child.start()
    assert "exited with code 7 before it was ready" in caught.value.reason
    assert "fatal: something broke" in caught.value.last_output
    assert "fatal: something broke" in str(caught.value)


@pytest.mark.expect_log_warnings
async def test_a_child_not_ready_in_time_is_killed_and_counted_as_a_failure():
    child = ManagedChild(
        spec("silent", ready_timeout_s=0.5), ready=READY_LINE, restart=RestartPolicy(max_restarts=0)
    )
    with pytest.raises(ChildGaveUp, match="not ready within 0.5 s"):
        await child.start()
    assert child.pid is None


@pytest.mark.expect_log_warnings
async def test_a_missing_executable_gives_up_at_once():
    child = ManagedChild(ChildSpec("nope", ("/nonexistent/luna-binary",)), restart=FAST_RESTART)
    with pytest.raises(ChildGaveUp, match="could not start"):
        await child.start()


async def test_stop_uses_the_graceful_step_first():
    async def graceful(managed: ManagedChild) -> None:
        os.kill(managed.pid, signal.SIGUSR1)

    child = ManagedChild(spec("serve"), ready=READY_LINE, graceful_stop=graceful)
    ready = await child.start()
    await child.stop()
    assert "graceful" in child.output and "terminated" not in child.output
    assert child.returncode == 0 and gone(ready.pid)


async def test_stop_kills_a_child_that_ignores_terminate():
    recorder = Recorder()
    child = ManagedChild(
        spec("stubborn"),
        ready=READY_LINE,
        stop=StopPolicy(graceful_timeout_s=0.1, terminate_timeout_s=0.3, kill_timeout_s=5.0),
        on_event=recorder,
    )
    ready = await child.start()
    await child.stop()
    assert child.returncode == -signal.SIGKILL
    assert gone(ready.pid)
    assert recorder.of(Exited)[-1].expected


async def test_stop_during_the_restart_backoff_ends_supervision():
    child = ManagedChild(
        spec("crash-after-ready", "5"),
        ready=READY_LINE,
        restart=RestartPolicy(max_restarts=5, backoff_initial_s=30),
    )
    await child.start()
    async for event in child.events(until_end=False):
        if isinstance(event, Restarting):
            break
    await asyncio.wait_for(child.stop(), 10)
    assert child.state is ChildState.STOPPED


async def test_stop_before_ready_makes_start_raise_stopped():
    child = ManagedChild(spec("silent"), ready=READY_LINE)
    starting = asyncio.create_task(child.start())
    async for event in child.events(until_end=False):
        if isinstance(event, Starting):
            break
    await child.stop()
    with pytest.raises(ChildStopped):
        await starting


@pytest.mark.expect_log_warnings
async def test_a_failing_job_object_kills_the_child_and_gives_up():
    class BrokenJob:
        def __init__(self) -> None:
            self.pids: list[int] = []

        def assign(self, pid: int) -> None:
            self.pids.append(pid)
            raise OSError(5, "access denied")

    job = BrokenJob()
    child = ManagedChild(spec("serve"), ready=READY_LINE, job=job, restart=FAST_RESTART)
    with pytest.raises(ChildGaveUp, match="Job Object"):
        await child.start()
    assert len(job.pids) == 1 and gone(job.pids[0])


async def test_a_working_job_object_is_given_every_started_child():
    pids: list[int] = []

    class RecordingJob:
        def assign(self, pid: int) -> None:
            pids.append(pid)

    async with ManagedChild(spec("serve"), ready=READY_LINE, job=RecordingJob()) as child:
        assert pids == [child.pid]


def test_popen_options_per_platform():
    windows = popen_options("win32")
    assert windows == {"creationflags": WINDOWS_CREATION_FLAGS}
    assert WINDOWS_CREATION_FLAGS == 0x00000200 | 0x08000000
    linux = popen_options("linux")
    assert linux["start_new_session"] is True and callable(linux["preexec_fn"])
    assert popen_options("darwin") == {"start_new_session": True}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_the_child_dies_when_its_parent_is_sigkilled():
    """An intermediate process supervises a child; SIGKILL the intermediate: the child must go too."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.child_script",
        "spawn-grandchild",
        stdout=subprocess.PIPE,
        env=child_env(),
        cwd=REPO,
    )
    try:
        grandchild = None
        while grandchild is None:
            line = await asyncio.wait_for(parent.stdout.readline(), 30)
            assert line, "the intermediate process ended before its child was ready"
            if line.startswith(b"GRANDCHILD pid="):
                grandchild = int(line.split(b"=")[1])
        assert psutil.Process(grandchild).ppid() == parent.pid
        parent.kill()
        await parent.wait()
        assert gone(grandchild, timeout=10), f"child {grandchild} outlived its SIGKILLed parent"
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


@pytest.mark.expect_log_warnings
async def test_a_probed_child_that_exits_is_reported_as_exited_not_as_a_timeout():
    async def never():
        return None

    child = ManagedChild(
        spec("crash", "9"),
        ready=ReadyWhenProbe(never, interval_s=0.01),
        restart=RestartPolicy(max_restarts=0),
    )
    with pytest.raises(ChildGaveUp, match="exited with code 9 before it was ready"):
        await child.start()


async def test_a_prefixed_json_ready_line_like_the_daemons_gives_its_payload():
    child = ManagedChild(spec("serve"), ready=ReadyWhenLine.json_after("CHILD_JSON_READY", stream="stderr"))
    async with child:
        assert child.ready_info == {"pid": child.pid, "port": 1234}
    parse = ReadyWhenLine.json_after("LUNA_DAEMON_READY").parse
    assert parse('LUNA_DAEMON_READY {"port": 19283}') == {"port": 19283}
    assert parse("LUNA_DAEMON_READY {broken") is None and parse("other line") is None


async def test_a_graceful_step_that_hangs_is_bounded_then_the_child_is_terminated():
    entered = asyncio.Event()

    async def hangs(managed: ManagedChild) -> None:
        entered.set()
        await asyncio.Event().wait()

    child = ManagedChild(
        spec("serve"), ready=READY_LINE, graceful_stop=hangs, stop=StopPolicy(graceful_timeout_s=0.2)
    )
    ready = await child.start()
    await asyncio.wait_for(child.stop(), 15)
    assert entered.is_set() and "terminated" in child.output
    assert child.returncode == 0 and gone(ready.pid)


async def test_an_events_iterator_ends_after_stopped():
    child = ManagedChild(spec("serve"), ready=READY_LINE)
    seen = []
    stream = child.events()  # subscribed now, before anything happens

    async def watch():
        async for event in stream:
            seen.append(type(event))

    watcher = asyncio.create_task(watch())
    await child.start()
    await child.stop()
    await asyncio.wait_for(watcher, 10)
    assert seen[0] is Starting and Ready in seen and seen[-2:] == [Exited, Stopped]


@pytest.mark.expect_log_warnings
async def test_a_fatal_exit_code_gives_up_without_restarting():
    recorder = Recorder()
    child = ManagedChild(
        spec("crash", "2"),
        ready=READY_LINE,
        restart=RestartPolicy(max_restarts=5, backoff_initial_s=0.01, fatal_exit_codes=frozenset({2})),
        on_event=recorder,
    )
    with pytest.raises(ChildGaveUp, match="exited with code 2 before it was ready.*not restarted"):
        await child.start()
    assert recorder.of(Restarting) == [] and len(recorder.of(Starting)) == 1
