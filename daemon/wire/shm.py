"""Same-host tensor transfer through named shared memory (protocol v1 fast path).

Ownership rule: the *client* owns every segment. Per connection it keeps a :class:`ShmArena`
of segments named ``<prefix><n>`` (the prefix is random per connection), leases one segment per
request id for that request's input tensors plus a reply area, and releases it when the answer
has arrived. The server only *attaches* (:class:`ShmAttachments`): it reads inputs as
zero-copy views and writes the response tensors into the reply area (:class:`ReplyWriter`). So
a segment's lifetime is tied to one request id, only one process ever unlinks it, and a server
never leaks a segment whatever a client does.

Answer arrays are views on the segment, never copies (:meth:`Lease.answer_view`): the segment
is lent to no later request while any array made from the answer is alive, so a returned
array is never written over; the round trip costs two copies (into the segment, and the
daemon's answer into the reply area).

Why not ``multiprocessing.shared_memory.SharedMemory`` directly (it is the same OS mechanism,
and the creator still registers with its ``resource_tracker`` for crash clean-up on POSIX):
before Python 3.13 *attaching* also registers the segment with the attacher's resource tracker,
which then unlinks the owner's segment and warns about "leaked" objects when the attacher exits;
its ``__del__`` raises ``BufferError`` while numpy views exist; and it sizes new segments with
``ftruncate`` only, so a full ``/dev/shm`` (Docker's 64 MB default) kills the process with
SIGBUS on first write. Here creation reserves the pages (``posix_fallocate``) and fails with a
clean ``OSError`` instead, which callers treat as "send through the socket".

Works on Linux/macOS (POSIX ``shm_open``) and Windows (named file mappings, which vanish when
the last handle closes). On Windows each :class:`Segment` keeps its own handle to the section
open for as long as it is mapped: ``mmap(tagname=…)`` opens a section *by name* and silently
creates a new zeroed one when none exists, so the handle held across that call is what makes it
map the client's section, and a section that vanished is a ``FileNotFoundError``, never zeros.
Stdlib + numpy only; vendored into the ComfyUI node pack with ``client.py`` and ``protocol.py``. Classes are not thread-safe: each belongs to one connection
and is used by that connection's owner (a lock-holding blocking client or one event loop).
"""

from __future__ import annotations

import mmap
import os
import secrets
import sys
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .protocol import TENSOR_ALIGNMENT, ShmRef, is_shm_prefix, is_shm_segment_name

_WINDOWS = sys.platform == "win32"
if _WINDOWS:  # pragma: no cover - exercised on Windows only
    import _winapi
else:
    import _posixshmem
    from multiprocessing import resource_tracker

    _winapi = None  # tests put a fake here to run the Windows branches

MIN_SEGMENT_BYTES = 1 << 20
SHM_MIN_TENSOR_BYTES = 64 * 1024  # smaller tensors are cheaper inline in the frame


def _aligned(offset: int) -> int:
    return -(-offset // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT


def _segment_size(nbytes: int) -> int:
    """Powers of two up to 16 MiB (easy reuse), then whole 4 MiB steps (little waste)."""
    if nbytes <= 16 << 20:
        return max(MIN_SEGMENT_BYTES, 1 << (nbytes - 1).bit_length())
    return -(-nbytes // (4 << 20)) * (4 << 20)


def new_prefix() -> str:
    """A short random segment-name prefix for one connection (macOS allows 31-char names)."""
    return "lu" + secrets.token_hex(5)


class Segment:
    """One mapped named shared-memory segment (created here, or attached by name)."""

    def __init__(self, name: str, size: int, mapping: mmap.mmap, *, owner: bool, section: int | None = None):
        self.name = name
        self.size = size
        self.owner = owner
        self._mmap: mmap.mmap | None = mapping
        self._unlinked = False
        self._section = section  # Windows: our handle to the file mapping, closed in close()

    @property
    def buf(self) -> memoryview:
        if self._mmap is None:
            raise ValueError(f"shared memory segment {self.name!r} is closed")
        return memoryview(self._mmap)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create a new segment of at least ``size`` bytes; raises OSError if it cannot."""
        if size <= 0:
            raise ValueError("segment size must be > 0")
        if _WINDOWS:
            mapping, section = _win_create(name, size)
            return cls(name, size, mapping, owner=True, section=section)
        posix_name = "/" + name
        fd = _posixshmem.shm_open(posix_name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)  # reserve now: ENOSPC here, not SIGBUS later
            else:
                os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(posix_name)
            raise
        os.close(fd)
        # The creator's tracker unlinks the segment if this process dies without doing so.
        resource_tracker.register(posix_name, "shared_memory")
        return cls(name, size, mapping, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment read-write without taking ownership (never unlinks it)."""
        if _WINDOWS:
            mapping, size, section = _win_attach(name)
            return cls(name, size, mapping, owner=False, section=section)
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            size = os.fstat(fd).st_size
            if size <= 0:
                raise OSError(f"shared memory {name!r} is empty")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mapping, owner=False)

    def close(self) -> None:
        """Unmap. If numpy views still use the memory, the mapping goes when the last one does."""
        mapping, self._mmap = self._mmap, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # exported views keep it alive; mmap's deallocator unmaps quietly later
        section, self._section = self._section, None
        if section is not None:
            _winapi.CloseHandle(section)  # a live mmap holds a handle of its own

    def unlink(self) -> None:
        """Remove the name (owner only; on Windows the mapping dies with its last handle)."""
        if not self.owner or self._unlinked:
            return
        self._unlinked = True
        if not _WINDOWS:
            posix_name = "/" + self.name
            try:
                _posixshmem.shm_unlink(posix_name)
            except FileNotFoundError:
                pass
            resource_tracker.unregister(posix_name, "shared_memory")

    def write(self, offset: int, array: np.ndarray) -> None:
        """Copy a C-contiguous array's bytes to ``offset``."""
        source = array.reshape(-1).view(np.uint8)
        target = np.frombuffer(self.buf, dtype=np.uint8, count=source.size, offset=offset)
        np.copyto(target, source)
        del target

    def view(self, offset: int, nbytes: int) -> memoryview:
        """A zero-copy view of ``nbytes`` at ``offset``; raises ValueError when out of bounds."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"range {offset}+{nbytes} is outside segment {self.name!r} of {self.size} bytes")
        return self.buf[offset : offset + nbytes]


def _map_section(size: int, name: str) -> mmap.mmap:
    """Map the section called ``name`` (Windows; CPython opens it with CreateFileMappingW, which
    creates a new one if the name is free — callers hold a handle so it is not)."""
    return mmap.mmap(-1, size, tagname=name)  # type: ignore[call-arg]  # Windows-only argument


def _win_create(name: str, size: int) -> tuple[mmap.mmap, int]:
    """A new named section of ``size`` bytes, mapped; returns the mapping and our handle."""
    handle = _winapi.CreateFileMapping(
        _winapi.INVALID_HANDLE_VALUE,
        _winapi.NULL,
        _winapi.PAGE_READWRITE,
        (size >> 32) & 0xFFFFFFFF,
        size & 0xFFFFFFFF,
        name,
    )
    try:
        if _winapi.GetLastError() == _winapi.ERROR_ALREADY_EXISTS:
            raise FileExistsError(f"shared memory {name!r} already exists")
        return _map_section(size, name), handle
    except BaseException:
        _winapi.CloseHandle(handle)
        raise


def _win_attach(name: str) -> tuple[mmap.mmap, int, int]:
    """Map the client's existing section ``name``: (mapping, size, our handle). The handle stays
    open across the name-based ``mmap`` (and for the segment's life), so the section cannot vanish
    in between and be replaced by a new zeroed one. FileNotFoundError when it is gone already."""
    handle = _winapi.OpenFileMapping(_winapi.FILE_MAP_READ, False, name)
    try:
        view = _winapi.MapViewOfFile(handle, _winapi.FILE_MAP_READ, 0, 0, 0)
        try:
            size = _winapi.VirtualQuerySize(view)
        finally:
            _winapi.UnmapViewOfFile(view)
        return _map_section(size, name), size, handle
    except BaseException:
        _winapi.CloseHandle(handle)
        raise


class Lease:
    """One request's segment: inputs are written from offset 0, the reply area follows.

    Answer tensors are handed out as views on the segment (:meth:`answer_view`), not copied.
    Every such view is cut from one array over the whole segment (``_window``); once the answer
    is decoded the lease keeps only a weak reference to it (:meth:`seal`), so :attr:`in_use`
    says whether any array made from the answer (a view, a memoryview, a torch tensor…) is
    still alive. The arena lends the segment to no other request until it is not.
    """

    def __init__(self, segment: Segment):
        self.segment = segment
        self.used = 0
        self._window: np.ndarray | None = None
        self._lent: weakref.ref[np.ndarray] | None = None

    def answer_view(self, offset: int, nbytes: int) -> memoryview:
        """A zero-copy view of an answer tensor's bytes; raises ValueError when out of bounds."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.segment.size:
            raise ValueError(
                f"range {offset}+{nbytes} is outside segment {self.segment.name!r} of {self.segment.size} bytes"
            )
        if self._window is None:
            # numpy collapses view chains to the array owning the memory but stops at this
            # array (its base is a memoryview), so every tensor cut from it keeps it alive.
            self._window = np.frombuffer(self.segment.buf, dtype=np.uint8)
        return memoryview(self._window[offset : offset + nbytes])

    def seal(self) -> None:
        """The answer is decoded: from now on only the arrays made from it keep the window."""
        if self._window is not None:
            self._lent = weakref.ref(self._window)
            self._window = None

    @property
    def in_use(self) -> bool:
        """True while an array made from this lease's answer is alive somewhere."""
        return self._window is not None or (self._lent is not None and self._lent() is not None)

    def place(self, array: np.ndarray) -> ShmRef | None:
        """ShmPlacer for request tensors: copy into the segment, or None (send inline)."""
        if array.nbytes < SHM_MIN_TENSOR_BYTES:
            return None
        start = _aligned(self.used)
        if start + array.nbytes > self.segment.size:
            return None
        self.segment.write(start, array)
        self.used = start + array.nbytes
        return ShmRef(self.segment.name, start)

    def reply_area(self) -> dict:
        """The ``shm_reply`` option: where the server may write response tensors."""
        start = _aligned(self.used)
        return {"segment": self.segment.name, "offset": start, "capacity": max(0, self.segment.size - start)}


class ShmArena:
    """Client-side pool of segments for one connection, leased per request id and reused.

    Segments are sized in powers of two from 1 MiB (4 MiB steps above 16 MiB); up to
    ``max_idle`` free ones (``max_idle_bytes`` in all, but always the largest) are kept for the
    next requests, the rest are unlinked at once. A released lease whose answer arrays are
    still alive (:attr:`Lease.in_use`) is *retired* instead: it goes back to the pool at the
    first :meth:`lease` after the last of them is gone, so a later request never writes over
    an array the caller holds. :meth:`close` unlinks all (arrays still alive keep their memory:
    an unlinked segment stays mapped until its last view goes).
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        max_idle: int = 4,
        max_idle_bytes: int = 256 << 20,
        max_segment_bytes: int = 4 << 30,
    ):
        self.prefix = prefix or new_prefix()
        self.max_idle = max_idle
        self.max_idle_bytes = max_idle_bytes
        self.max_segment_bytes = max_segment_bytes
        self._counter = 0
        self._idle: list[Segment] = []
        self._leased: dict[int, Lease] = {}
        self._retired: list[Lease] = []  # released, but answer arrays still view them
        self.created = 0
        self.closed = False

    def _next_name(self) -> str:
        self._counter += 1
        return f"{self.prefix}_{self._counter:x}"

    def lease(self, request_id: int, nbytes: int) -> Lease | None:
        """A segment of at least ``nbytes`` for ``request_id``, or None if none can be made."""
        if self.closed or nbytes <= 0 or nbytes > self.max_segment_bytes:
            return None
        self._reclaim()
        best = None
        for segment in self._idle:
            if segment.size >= nbytes and (best is None or segment.size < best.size):
                best = segment
        if best is not None:
            self._idle.remove(best)
        else:
            size = _segment_size(nbytes)
            try:
                best = Segment.create(self._next_name(), size)
            except OSError:
                return None  # no room in /dev/shm (or no shm at all): the socket still works
            self.created += 1
        lease = Lease(best)
        self._leased[request_id] = lease
        return lease

    def release(self, request_id: int) -> None:
        """The answer to ``request_id`` was consumed: its segment may serve another request."""
        lease = self._leased.pop(request_id, None)
        if lease is None:
            return
        lease.seal()
        if self.closed:
            self._destroy(lease.segment)
        elif lease.in_use:
            self._retired.append(lease)
        else:
            self._make_idle(lease.segment)

    def _reclaim(self) -> None:
        """Retired leases whose answer arrays are all gone become idle segments again."""
        if not self._retired:
            return
        still_used = []
        for lease in self._retired:
            if lease.in_use:
                still_used.append(lease)
            else:
                self._make_idle(lease.segment)
        self._retired = still_used

    def _make_idle(self, segment: Segment) -> None:
        self._idle.append(segment)
        self._idle.sort(key=lambda s: s.size)
        # Keep few idle segments and bounded idle memory, but always the largest one, so a
        # stream of same-size big requests never re-creates its segment.
        while len(self._idle) > 1 and (
            len(self._idle) > self.max_idle or sum(s.size for s in self._idle) > self.max_idle_bytes
        ):
            self._destroy(self._idle.pop(0))

    def discard(self, request_id: int) -> None:
        """Unlink ``request_id``'s segment without reuse (its answer never came; the daemon
        may still write into it)."""
        lease = self._leased.pop(request_id, None)
        if lease is not None:
            self._destroy(lease.segment)

    @staticmethod
    def _destroy(segment: Segment) -> None:
        segment.close()
        segment.unlink()

    @property
    def segment_names(self) -> list[str]:
        return (
            [s.name for s in self._idle]
            + [lease.segment.name for lease in self._leased.values()]
            + [lease.segment.name for lease in self._retired]
        )

    def close(self) -> None:
        """Unlink every segment, leased or idle (the connection is gone)."""
        self.closed = True
        for segment in self._idle:
            self._destroy(segment)
        self._idle.clear()
        for lease in [*self._leased.values(), *self._retired]:
            self._destroy(lease.segment)
        self._leased.clear()
        self._retired.clear()


class ShmAttachments:
    """Server-side cache of one connection's client segments (attach only, never unlink).

    The prefix must be ``lu`` + 10 hex digits and only names ``<prefix>_<hex>`` of the prefix
    this client announced in ``hello`` are accepted (PROTOCOL.md §6), so a client cannot make
    the daemon map anyone else's memory (``Local\\…`` on Windows, other POSIX segments). At most ``capacity`` mappings are
    kept (least recently used are unmapped). Usable as the decoder's ``shm_reader``.
    """

    def __init__(self, prefix: str, *, capacity: int = 8):
        if not is_shm_prefix(prefix):
            raise ValueError("shared-memory prefix must be 'lu' followed by 10 lower-case hex digits")
        self.prefix = prefix
        self.capacity = capacity
        self._segments: OrderedDict[str, Segment] = OrderedDict()

    def segment(self, name: str) -> Segment:
        if not is_shm_segment_name(name, self.prefix):
            raise ValueError(f"segment {str(name)[:40]!r} does not belong to this connection")
        segment = self._segments.get(name)
        if segment is None:
            segment = Segment.attach(name)
            self._segments[name] = segment
            while len(self._segments) > self.capacity:
                _, old = self._segments.popitem(last=False)
                old.close()
        else:
            self._segments.move_to_end(name)
        return segment

    def __call__(self, ref: ShmRef, nbytes: int) -> memoryview:
        return self.segment(ref.segment).view(ref.offset, nbytes)

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()


class ReplyWriter:
    """ShmPlacer for response tensors: writes them into the client's reply area if they fit."""

    def __init__(self, segment: Segment, offset: int, capacity: int):
        if offset < 0 or capacity < 0 or offset + capacity > segment.size:
            raise ValueError("reply area is outside the segment")
        self.segment = segment
        self.start = offset
        self.end = offset + capacity
        self.used = offset

    def __call__(self, array: np.ndarray) -> ShmRef | None:
        if array.nbytes < SHM_MIN_TENSOR_BYTES:
            return None
        start = _aligned(self.used)
        if start + array.nbytes > self.end:
            return None
        self.segment.write(start, array)
        self.used = start + array.nbytes
        return ShmRef(self.segment.name, start)


def wire_nbytes(arrays: Sequence[np.ndarray], wire_dtype: str | None = None) -> int:
    """Bytes the arrays take in shared memory (aligned), after ``wire_dtype`` narrowing."""
    total = 0
    for array in arrays:
        itemsize = array.dtype.itemsize
        if array.dtype == np.float32 and wire_dtype in ("float16", "bfloat16"):
            itemsize = 2
        total = _aligned(total) + array.size * itemsize
    return total


def probe_create(arena: ShmArena) -> tuple[Segment, str] | None:
    """Make the hello probe: a tiny segment holding a random nonce (None: no shm here)."""
    nonce = secrets.token_bytes(16)
    try:
        segment = Segment.create(arena._next_name(), mmap.PAGESIZE)
    except OSError:
        return None
    segment.buf[:16] = nonce
    return segment, nonce.hex()


def probe_answer(prefix: str, segment_name: str, nonce_hex: str) -> bool:
    """Server side: can we map the client's probe and read its nonce? Then write it reversed."""
    try:
        nonce = bytes.fromhex(nonce_hex)
        if len(nonce) != 16 or not is_shm_prefix(prefix) or not is_shm_segment_name(segment_name, prefix):
            return False
        segment = Segment.attach(segment_name)
    except (OSError, ValueError):
        return False
    try:
        if segment.size < 32 or bytes(segment.buf[:16]) != nonce:
            return False
        segment.buf[16:32] = nonce[::-1]
        return True
    finally:
        segment.close()


def probe_confirmed(segment: Segment, nonce_hex: str) -> bool:
    """Client side: did the server write the reversed nonce (so it maps our memory read-write)?"""
    return bytes(segment.buf[16:32]) == bytes.fromhex(nonce_hex)[::-1]
