"""The Windows shared-memory branch keeps its section handle open.

A fake of ``_winapi`` models the one rule of Windows named sections that matters here: a section
lives while any handle to it is open, and opening a name that no longer exists through
``mmap(tagname=…)`` (CreateFileMappingW) silently creates a *new zeroed* section. Linux checks
that our code holds a handle across the name-based mapping and for the segment's life, closes it
exactly once (also when mapping fails), and turns a vanished section into FileNotFoundError.
Only a real Windows box can confirm CPython's mmap/_winapi behave as modelled.
"""

from __future__ import annotations

import mmap
import types

import pytest

from daemon.wire import shm
from daemon.wire.shm import Segment, probe_answer


class FakeSections:
    """Kernel-object namespace: name → open-handle count; handles → names."""

    def __init__(self):
        self.refs: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.handles: dict[int, str] = {}
        self.zeroed_by_mmap: list[str] = []  # the bug: mmap(tagname) made a new section
        self.mapped_existing: list[str] = []
        self.last_error = 0
        self.on_query = None  # a hook run while the size is queried (the race window)
        self.fail_map = False
        self._next = 100
        self.winapi = types.SimpleNamespace(
            INVALID_HANDLE_VALUE=-1,
            NULL=0,
            PAGE_READWRITE=4,
            ERROR_ALREADY_EXISTS=183,
            FILE_MAP_READ=4,
            CreateFileMapping=self.create,
            OpenFileMapping=self.open,
            MapViewOfFile=lambda handle, access, hi, lo, size: ("view", self.handles[handle]),
            VirtualQuerySize=self.query,
            UnmapViewOfFile=lambda view: None,
            CloseHandle=self.close,
            GetLastError=lambda: self.last_error,
        )

    def _handle(self, name: str) -> int:
        self._next += 1
        self.handles[self._next] = name
        self.refs[name] = self.refs.get(name, 0) + 1
        return self._next

    def create(self, file, security, protect, high, low, name):
        self.last_error = 183 if name in self.refs else 0
        self.sizes.setdefault(name, (high << 32) | low)
        return self._handle(name)

    def open(self, access, inherit, name):
        if name not in self.refs:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return self._handle(name)

    def query(self, view):
        if self.on_query is not None:
            self.on_query()
        return self.sizes[view[1]]

    def close(self, handle):
        name = self.handles.pop(handle)  # KeyError: a handle closed twice
        self.refs[name] -= 1
        if self.refs[name] == 0:
            del self.refs[name], self.sizes[name]

    def map(self, size, name):
        """What CPython's mmap(-1, size, tagname=name) does on Windows."""
        if self.fail_map:
            raise OSError(8, "Not enough memory resources")
        if name in self.refs:
            self.mapped_existing.append(name)
        else:
            self.zeroed_by_mmap.append(name)
        return mmap.mmap(-1, size)  # the bytes are not shared in this fake; the lifecycle is


@pytest.fixture
def windows(monkeypatch):
    fake = FakeSections()
    monkeypatch.setattr(shm, "_WINDOWS", True)
    monkeypatch.setattr(shm, "_winapi", fake.winapi)
    monkeypatch.setattr(shm, "_map_section", fake.map)
    return fake


def test_a_client_section_that_closes_mid_attach_is_still_the_one_mapped(windows):
    client = Segment.create("luab_1", 1 << 20)

    def client_lets_go():  # the client's last handle goes while the daemon is attaching
        client.close()

    windows.on_query = client_lets_go
    attached = Segment.attach("luab_1")
    assert windows.zeroed_by_mmap == [] and windows.mapped_existing == ["luab_1", "luab_1"]
    assert attached.size == 1 << 20 and windows.refs == {"luab_1": 1}  # alive: our handle
    attached.close()
    assert windows.refs == {} and windows.handles == {}


def test_a_vanished_section_is_file_not_found_never_a_new_zeroed_one(windows):
    with pytest.raises(FileNotFoundError):
        Segment.attach("luab_7")
    assert windows.zeroed_by_mmap == [] and windows.refs == {}
    assert probe_answer("luab", "luab_7", "00" * 16) is False  # hello falls back to the socket


def test_create_refuses_an_existing_name_and_releases_its_handle(windows):
    first = Segment.create("luab_2", 1 << 20)
    with pytest.raises(FileExistsError):
        Segment.create("luab_2", 1 << 20)
    assert windows.refs == {"luab_2": 1}
    first.close()
    assert windows.refs == {}


def test_a_failed_mapping_closes_the_handle(windows):
    client = Segment.create("luab_3", 1 << 20)
    windows.fail_map = True
    with pytest.raises(OSError, match="Not enough memory"):
        Segment.attach("luab_3")
    with pytest.raises(OSError, match="Not enough memory"):
        Segment.create("luab_4", 1 << 20)
    assert windows.refs == {"luab_3": 1}
    client.close()
    assert windows.handles == {}


def test_close_releases_the_handle_once_even_with_views_alive(windows):
    segment = Segment.create("luab_5", 1 << 20)
    view = segment.view(0, 16)  # a numpy/memoryview export makes mmap.close() raise BufferError
    segment.close()
    segment.close()
    assert windows.handles == {}
    view.release()
