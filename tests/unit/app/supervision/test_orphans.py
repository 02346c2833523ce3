"""The no-orphan mechanisms: the Windows Job Object call sequence (checked with a recording kernel32,
since these machines run Linux) and the Linux parent-death preexec hook."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

import pytest

from app.supervision.orphans import (
    JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    PR_SET_PDEATHSIG,
    PROCESS_SET_QUOTA,
    PROCESS_TERMINATE,
    JobObjectError,
    JobObjectExtendedLimitInformation,
    WindowsJob,
    declare_job_prototypes,
    linux_preexec,
    orphan_protection,
)


class RecordingKernel32:
    """Stands in for kernel32 on Linux: records calls; ``fail`` names a function that returns 0."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple] = []
        self.limit_flags: int | None = None

    def _result(self, name: str, value: int) -> int:
        return 0 if self.fail == name else value

    def CreateJobObjectW(self, attributes, name):
        self.calls.append(("CreateJobObjectW", attributes, name))
        return self._result("CreateJobObjectW", 0x100)

    def SetInformationJobObject(self, handle, info_class, info_ref, size):
        info = ctypes.cast(info_ref, ctypes.POINTER(JobObjectExtendedLimitInformation)).contents
        self.limit_flags = info.BasicLimitInformation.LimitFlags
        self.calls.append(("SetInformationJobObject", handle, info_class, size))
        return self._result("SetInformationJobObject", 1)

    def OpenProcess(self, access, inherit, pid):
        self.calls.append(("OpenProcess", access, inherit, pid))
        return self._result("OpenProcess", 0x200)

    def AssignProcessToJobObject(self, job, process):
        self.calls.append(("AssignProcessToJobObject", job, process))
        return self._result("AssignProcessToJobObject", 1)

    def CloseHandle(self, handle):
        self.calls.append(("CloseHandle", handle))
        return 1

    def TerminateJobObject(self, job, exit_code):
        self.calls.append(("TerminateJobObject", job, exit_code))
        return self._result("TerminateJobObject", 1)


def test_the_job_object_kills_on_close_and_takes_each_child():
    kernel32 = RecordingKernel32()
    job = WindowsJob(kernel32)
    assert kernel32.limit_flags == JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == 0x2000
    assert kernel32.calls[1] == (
        "SetInformationJobObject",
        0x100,
        JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
        ctypes.sizeof(JobObjectExtendedLimitInformation),
    )
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(JobObjectExtendedLimitInformation) == 144  # winnt.h on x64
    job.assign(4242)
    assert kernel32.calls[2:] == [
        ("OpenProcess", PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, 4242),
        ("AssignProcessToJobObject", 0x100, 0x200),
        ("CloseHandle", 0x200),  # the process handle, never the job's
    ]
    job.close()
    assert kernel32.calls[-1] == ("CloseHandle", 0x100)
    with pytest.raises(JobObjectError, match="closed"):
        job.assign(1)


@pytest.mark.parametrize("failing", ["CreateJobObjectW", "SetInformationJobObject"])
def test_a_job_that_cannot_be_set_up_raises(failing):
    kernel32 = RecordingKernel32(fail=failing)
    with pytest.raises(JobObjectError, match=failing):
        WindowsJob(kernel32)
    if failing == "SetInformationJobObject":
        assert kernel32.calls[-1] == ("CloseHandle", 0x100)  # no handle leaks


@pytest.mark.parametrize("failing", ["OpenProcess", "AssignProcessToJobObject"])
def test_a_child_that_cannot_join_the_job_raises(failing):
    kernel32 = RecordingKernel32(fail=failing)
    job = WindowsJob(kernel32)
    with pytest.raises(JobObjectError, match=failing):
        job.assign(7)
    if failing == "AssignProcessToJobObject":
        assert kernel32.calls[-1] == ("CloseHandle", 0x200)


class RecordingLibc:
    def __init__(self, result: int = 0) -> None:
        self.result = result
        self.calls: list[tuple] = []

    def prctl(self, *args):
        self.calls.append(args)
        return self.result


class ExpectingLibc:
    """prctl succeeds only when called with exactly PR_SET_PDEATHSIG + SIGKILL."""

    def prctl(self, *args):
        return 0 if args == (PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) else -1


@pytest.mark.skipif(sys.platform == "win32", reason="preexec_fn is POSIX-only")
def test_the_linux_preexec_hook_arms_pdeathsig_with_sigkill_in_the_child():
    # Run where subprocess runs it: in the forked child, before exec. A wrong prctl call fails the start.
    subprocess.run([sys.executable, "-c", "pass"], preexec_fn=linux_preexec(ExpectingLibc()), check=True)
    with pytest.raises(subprocess.SubprocessError):
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=linux_preexec(RecordingLibc(result=-1)))


def test_a_failing_prctl_stops_the_start():
    arm = linux_preexec(RecordingLibc(result=-1))
    with pytest.raises(OSError, match="PR_SET_PDEATHSIG"):
        arm()


def test_orphan_protection_names_the_mechanism():
    expected = {"linux": "pdeathsig", "win32": "job-object"}.get(sys.platform, "none")
    assert orphan_protection() == expected


def test_terminating_the_job_ends_every_process_in_it_and_a_failure_is_an_error():
    kernel32 = RecordingKernel32()
    WindowsJob(kernel32).terminate(1)
    assert kernel32.calls[-1] == ("TerminateJobObject", 0x100, 1)
    with pytest.raises(JobObjectError, match="TerminateJobObject"):
        WindowsJob(RecordingKernel32(fail="TerminateJobObject")).terminate(1)


class _Process:
    """The part of asyncio.subprocess.Process that ManagedChild._signal uses."""

    pid = 4321
    returncode = None

    def __init__(self) -> None:
        self.signals: list[str] = []

    def kill(self) -> None:
        self.signals.append("kill")

    def terminate(self) -> None:
        self.signals.append("terminate")


@pytest.mark.parametrize("job_fails", [False, True])
def test_on_windows_the_kill_step_terminates_the_job_and_falls_back_to_the_process(
    monkeypatch, caplog, job_fails
):
    from app.supervision import child as child_module

    monkeypatch.setattr(child_module.sys, "platform", "win32")
    kernel32 = RecordingKernel32(fail="TerminateJobObject" if job_fails else None)
    managed = child_module.ManagedChild(
        child_module.ChildSpec("daemon", ("python", "-c", "pass")),
        ready=child_module.ReadyWhenLine(lambda line: None),
        job=WindowsJob(kernel32),
    )
    process = _Process()
    managed._signal(process, kill=False)  # terminate step: the process only (graceful-ish)
    managed._signal(process, kill=True)  # kill step: the whole job
    assert process.signals == (["terminate", "kill"] if job_fails else ["terminate"])
    assert ("TerminateJobObject", 0x100, 1) in kernel32.calls
    assert ("TerminateJobObject failed" in caplog.text) is job_fails


def test_the_real_kernel32_calls_are_declared_so_handles_keep_all_64_bits():
    from ctypes import wintypes
    from types import SimpleNamespace

    names = (
        "CreateJobObjectW",
        "SetInformationJobObject",
        "OpenProcess",
        "AssignProcessToJobObject",
        "TerminateJobObject",
    )
    kernel32 = SimpleNamespace(**{name: SimpleNamespace() for name in (*names, "CloseHandle")})
    assert declare_job_prototypes(kernel32) is kernel32
    assert kernel32.CreateJobObjectW.restype is wintypes.HANDLE
    assert kernel32.OpenProcess.restype is wintypes.HANDLE
    assert kernel32.AssignProcessToJobObject.argtypes == (wintypes.HANDLE, wintypes.HANDLE)
    assert kernel32.CloseHandle.argtypes == (wintypes.HANDLE,)
    assert kernel32.TerminateJobObject.argtypes[0] is wintypes.HANDLE
