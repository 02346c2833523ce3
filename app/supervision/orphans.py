"""Platform guarantees that a managed child dies with its parent, even when the parent is SIGKILLed.

Owns the two mechanisms :class:`~app.supervision.child.ManagedChild` uses:

* Linux: :func:`linux_preexec` returns a ``preexec_fn`` that calls ``prctl(PR_SET_PDEATHSIG,
  SIGKILL)`` in the forked child, then checks that the parent did not die in between. The
  kernel sends the signal when the *thread* that forked the child exits, not the process — so
  children must be started from the event loop's thread (asyncio's subprocess transport calls
  ``fork`` there), never from a short-lived worker thread.
* Windows: :class:`WindowsJob`, a Job Object with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``; every
  child is assigned to it right after it is created, and when the parent process ends for any
  reason the kernel closes the handle and kills everything in the job. Children are created
  with ``CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW`` (:data:`WINDOWS_CREATION_FLAGS`), so a
  console Ctrl+C reaches only the app, which then stops its children in order.

Other POSIX systems (macOS) have no parent-death signal: there the graceful stop path is the
only guarantee, which :func:`orphan_protection` reports. ``ctypes`` only; any thread, but see the
thread rule above.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
WINDOWS_CREATION_FLAGS = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW

JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
PROCESS_SET_QUOTA = 0x0100
PROCESS_TERMINATE = 0x0001


def orphan_protection() -> str:
    """How this platform keeps children from outliving the parent: ``pdeathsig``, ``job-object`` or ``none``."""
    if sys.platform.startswith("linux"):
        return "pdeathsig"
    if sys.platform == "win32":
        return "job-object"
    return "none"


def linux_preexec(libc: Any | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that arms ``PR_SET_PDEATHSIG = SIGKILL`` in the child.

    Everything is resolved here, before ``fork``: the function that runs in the child between
    ``fork`` and ``exec`` only calls into libc and ``os``, takes no locks and imports nothing.
    """
    libc = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)
    getppid, kill, getpid = os.getppid, os.kill, os.getpid

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if getppid() != parent:  # the parent died before prctl took effect
            kill(getpid(), sigkill)

    return arm


class _JobObjectBasicLimitInformation(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _IoCounters(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    ]


class JobObjectExtendedLimitInformation(ctypes.Structure):
    """``JOBOBJECT_EXTENDED_LIMIT_INFORMATION`` (winnt.h)."""

    _fields_ = [
        ("BasicLimitInformation", _JobObjectBasicLimitInformation),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def declare_job_prototypes(kernel32: Any) -> Any:
    """Declare the argument and result types of the kernel32 calls :class:`WindowsJob` makes.

    Without them ctypes returns every ``HANDLE`` as a C ``int`` and passes Python ints back as
    ``int``: a 64-bit handle would be cut to 32 bits and a value over ``2**31`` would raise.
    """
    from ctypes import wintypes

    handle, boolean, dword = wintypes.HANDLE, wintypes.BOOL, wintypes.DWORD
    prototypes = {
        "CreateJobObjectW": ((ctypes.c_void_p, wintypes.LPCWSTR), handle),
        "SetInformationJobObject": ((handle, ctypes.c_int, ctypes.c_void_p, dword), boolean),
        "OpenProcess": ((dword, boolean, dword), handle),
        "AssignProcessToJobObject": ((handle, handle), boolean),
        "TerminateJobObject": ((handle, ctypes.c_uint), boolean),
        "CloseHandle": ((handle,), boolean),
    }
    for name, (argtypes, restype) in prototypes.items():
        function = getattr(kernel32, name)
        function.argtypes = argtypes
        function.restype = restype
    return kernel32


class JobObjectError(OSError):
    """A Job Object call failed; the child it was for must not run unguarded."""


class WindowsJob:
    """One kill-on-close Job Object owned by one :class:`~app.supervision.child.ManagedChild`.

    The handle is deliberately never closed while the parent lives (closing it kills the
    children); :meth:`close` is for an orderly shutdown after the children have stopped.
    ``kernel32`` is injectable so the call sequence can be checked on any platform.
    """

    def __init__(self, kernel32: Any | None = None) -> None:
        if kernel32 is None:
            kernel32 = declare_job_prototypes(
                ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
            )
        self._k32 = kernel32
        handle = kernel32.CreateJobObjectW(None, None)
        if not handle:
            raise JobObjectError(self._last_error(), "CreateJobObjectW failed")
        info = JobObjectExtendedLimitInformation()
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        ok = kernel32.SetInformationJobObject(
            handle, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(info), ctypes.sizeof(info)
        )
        if not ok:
            error = self._last_error()
            kernel32.CloseHandle(handle)
            raise JobObjectError(error, "SetInformationJobObject(KILL_ON_JOB_CLOSE) failed")
        self.handle = handle

    def _last_error(self) -> int:
        getter = getattr(ctypes, "get_last_error", None)
        return int(getter()) if getter is not None else 0

    def assign(self, pid: int) -> None:
        """Put process ``pid`` into the job (it is killed when the job handle closes)."""
        if self.handle is None:
            raise JobObjectError(0, "the job object is closed")
        process = self._k32.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
        if not process:
            raise JobObjectError(self._last_error(), f"OpenProcess({pid}) failed")
        try:
            if not self._k32.AssignProcessToJobObject(self.handle, process):
                raise JobObjectError(self._last_error(), f"AssignProcessToJobObject({pid}) failed")
        finally:
            self._k32.CloseHandle(process)

    def terminate(self, exit_code: int = 1) -> None:
        """End every process in the job (``TerminateJobObject``): the child and anything it started.
        ``TerminateProcess`` of the child alone would leave a grandchild (daemon/PROTOCOL.md §14)."""
        if self.handle is None:
            raise JobObjectError(0, "the job object is closed")
        if not self._k32.TerminateJobObject(self.handle, exit_code):
            raise JobObjectError(self._last_error(), "TerminateJobObject failed")

    def close(self) -> None:
        """Close the job handle (kills whatever is still in it)."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._k32.CloseHandle(handle)
