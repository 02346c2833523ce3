"""The few Windows API calls the daemon makes through ctypes: console control handlers (kernel32)
and file security descriptors (advapi32).

Torch-free and stdlib-only; importable on every platform, the DLLs are loaded on first use (any
call off Windows raises OSError). The decisions live elsewhere — which events stop the daemon in
``daemon/console_events.py``, which ACL a token file gets and which one is refused in
``daemon/win_security.py`` — and reach Windows only through a :class:`WindowsApi` object, which
the tests replace with a fake. What remains here is argument marshalling, which only a real
Windows box exercises. Every function is safe on any thread.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

SDDL_REVISION_1 = 1
SE_FILE_OBJECT = 1
OWNER_SECURITY_INFORMATION = 0x1
DACL_SECURITY_INFORMATION = 0x4
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TOKEN_INFORMATION_CLASS.TokenUser
GENERIC_WRITE = 0x40000000
CREATE_NEW = 1
FILE_ATTRIBUTE_NORMAL = 0x80
ERROR_FILE_EXISTS = 80
ERROR_ALREADY_EXISTS = 183


class WindowsApi(Protocol):
    """What the daemon needs from Windows (the real one: :class:`Win32Api`)."""

    def add_console_handler(self, routine: Callable[[int], bool]) -> object:
        """Register ``routine(event) -> handled`` (called on a thread Windows creates); returns a
        token that must stay referenced while the handler can run."""
        ...

    def remove_console_handler(self, token: object) -> None: ...

    def current_user_sid(self) -> str:
        """The process user's SID as a string (``S-1-5-21-…``)."""
        ...

    def create_file_with_sddl(self, path: str, sddl: str) -> int:
        """Create ``path`` (fails if it exists: FileExistsError) with the security descriptor
        ``sddl``, open for writing; returns a CRT file descriptor."""
        ...

    def file_sddl(self, path: str) -> str:
        """Owner and DACL of ``path`` as SDDL (``O:…D:…``)."""
        ...


class Win32Api:
    """:class:`WindowsApi` over kernel32/advapi32 with ctypes (Windows only)."""

    @functools.cached_property
    def _dlls(self) -> tuple[Any, Any]:
        if sys.platform != "win32":
            raise OSError(errno.ENOSYS, "the Windows API exists only on Windows")
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
        kernel32.LocalFree.argtypes = (ctypes.c_void_p,)
        kernel32.LocalFree.restype = ctypes.c_void_p
        kernel32.CreateFileW.argtypes = (
            wintypes.LPCWSTR,
            wintypes.DWORD,
            wintypes.DWORD,
            ctypes.c_void_p,
            wintypes.DWORD,
            wintypes.DWORD,
            wintypes.HANDLE,
        )
        kernel32.CreateFileW.restype = wintypes.HANDLE
        advapi32.OpenProcessToken.argtypes = (
            wintypes.HANDLE,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.HANDLE),
        )
        advapi32.GetTokenInformation.argtypes = (
            wintypes.HANDLE,
            ctypes.c_int,
            ctypes.c_void_p,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.DWORD),
        )
        advapi32.ConvertSidToStringSidW.argtypes = (ctypes.c_void_p, ctypes.POINTER(wintypes.LPWSTR))
        advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = (
            wintypes.LPCWSTR,
            wintypes.DWORD,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
        )
        advapi32.GetNamedSecurityInfoW.argtypes = (
            wintypes.LPCWSTR,
            ctypes.c_int,
            wintypes.DWORD,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
        )
        advapi32.GetNamedSecurityInfoW.restype = wintypes.DWORD
        advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW.argtypes = (
            ctypes.c_void_p,
            wintypes.DWORD,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.LPWSTR),
            ctypes.POINTER(wintypes.ULONG),
        )
        return kernel32, advapi32

    @staticmethod
    def _error() -> OSError:
        return ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ console

    def add_console_handler(self, routine: Callable[[int], bool]) -> object:
        from ctypes import wintypes

        kernel32, _ = self._dlls
        prototype = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)  # type: ignore[attr-defined]

        def handler(event: int) -> int:
            try:
                return 1 if routine(event) else 0
            except BaseException:  # never let an exception cross into Windows' thread
                return 0

        token = prototype(handler)
        if not kernel32.SetConsoleCtrlHandler(token, True):
            raise self._error()
        return token

    def remove_console_handler(self, token: object) -> None:
        kernel32, _ = self._dlls
        if not kernel32.SetConsoleCtrlHandler(token, False):
            raise self._error()

    # ------------------------------------------------------------------ security

    def _local_free(self, pointer: Any) -> None:
        kernel32, _ = self._dlls
        kernel32.LocalFree(ctypes.cast(pointer, ctypes.c_void_p))

    def _sid_string(self, sid: int) -> str:
        from ctypes import wintypes

        _, advapi32 = self._dlls
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(ctypes.c_void_p(sid), ctypes.byref(text)):
            raise self._error()
        try:
            return str(text.value)
        finally:
            self._local_free(text)

    def current_user_sid(self) -> str:
        from ctypes import wintypes

        kernel32, advapi32 = self._dlls
        token = wintypes.HANDLE()
        if not advapi32.OpenProcessToken(kernel32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
            raise self._error()
        try:
            size = wintypes.DWORD()
            advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            if not advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, buffer, size, ctypes.byref(size)):
                raise self._error()
            # TOKEN_USER starts with SID_AND_ATTRIBUTES, whose first field is the PSID.
            sid = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_void_p))[0]
            return self._sid_string(sid)
        finally:
            kernel32.CloseHandle(token)

    def create_file_with_sddl(self, path: str, sddl: str) -> int:
        from ctypes import wintypes

        kernel32, advapi32 = self._dlls

        class SecurityAttributes(ctypes.Structure):
            _fields_ = (
                ("nLength", wintypes.DWORD),
                ("lpSecurityDescriptor", ctypes.c_void_p),
                ("bInheritHandle", wintypes.BOOL),
            )

        descriptor = ctypes.c_void_p()
        if not advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl, SDDL_REVISION_1, ctypes.byref(descriptor), None
        ):
            raise self._error()
        try:
            attributes = SecurityAttributes(ctypes.sizeof(SecurityAttributes), descriptor.value, False)
            handle = kernel32.CreateFileW(
                path, GENERIC_WRITE, 0, ctypes.byref(attributes), CREATE_NEW, FILE_ATTRIBUTE_NORMAL, None
            )
            if handle is None or handle == ctypes.c_void_p(-1).value:
                code = ctypes.get_last_error()  # type: ignore[attr-defined]
                if code in (ERROR_FILE_EXISTS, ERROR_ALREADY_EXISTS):
                    raise FileExistsError(errno.EEXIST, "file exists", path)
                raise ctypes.WinError(code)  # type: ignore[attr-defined]
        finally:
            self._local_free(descriptor)
        import msvcrt  # type: ignore[import-not-found]

        return msvcrt.open_osfhandle(handle, os.O_WRONLY | getattr(os, "O_BINARY", 0))

    def file_sddl(self, path: str) -> str:
        from ctypes import wintypes

        _, advapi32 = self._dlls
        owner, dacl, descriptor = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        wanted = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION
        code = advapi32.GetNamedSecurityInfoW(
            path,
            SE_FILE_OBJECT,
            wanted,
            ctypes.byref(owner),
            None,
            ctypes.byref(dacl),
            None,
            ctypes.byref(descriptor),
        )
        if code != 0:
            raise ctypes.WinError(code)  # type: ignore[attr-defined]
        try:
            text, length = wintypes.LPWSTR(), wintypes.ULONG()
            if not advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW(
                descriptor, SDDL_REVISION_1, wanted, ctypes.byref(text), ctypes.byref(length)
            ):
                raise self._error()
            try:
                return str(text.value)
            finally:
                self._local_free(text)
        finally:
            self._local_free(descriptor)


#: The process's Windows API (replaced by a fake in tests).
WINDOWS_API: WindowsApi = Win32Api()
