"""Shared-memory segments: create/attach/unlink, leases tied to request ids, reuse, no leaks,
prefix confinement, the hello probe, and the reply area."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.wire.protocol import ShmRef
from daemon.wire.shm import (
    MIN_SEGMENT_BYTES,
    SHM_MIN_TENSOR_BYTES,
    ReplyWriter,
    Segment,
    ShmArena,
    ShmAttachments,
    new_prefix,
    probe_answer,
    probe_confirmed,
    probe_create,
    wire_nbytes,
)

DEV_SHM = Path("/dev/shm")


def existing(name: str) -> bool:
    """Does the segment still exist? (attach is the portable test)."""
    try:
        segment = Segment.attach(name)
    except (FileNotFoundError, OSError):
        return False
    segment.close()
    return True


@pytest.fixture
def arena():
    arena = ShmArena()
    yield arena
    arena.close()


def test_created_segment_is_visible_to_an_attacher_and_gone_after_unlink():
    name = new_prefix() + "_t"
    owner = Segment.create(name, 4096)
    try:
        owner.buf[:5] = b"hello"
        peer = Segment.attach(name)
        assert bytes(peer.buf[:5]) == b"hello"
        peer.buf[5:8] = b"abc"
        assert bytes(owner.buf[5:8]) == b"abc"
        peer.close()
        peer.unlink()  # an attacher never unlinks
        assert existing(name)
    finally:
        owner.close()
        owner.unlink()
    assert not existing(name)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_segments_are_created_owner_only():
    name = new_prefix() + "_p"
    owner = Segment.create(name, 4096)
    try:
        assert (DEV_SHM / name).stat().st_mode & 0o777 == 0o600
    finally:
        owner.close()
        owner.unlink()


def test_close_with_live_numpy_views_does_not_raise_and_memory_stays_valid():
    name = new_prefix() + "_v"
    owner = Segment.create(name, 4096)
    owner.buf[:4] = b"\x01\x02\x03\x04"
    view = np.frombuffer(owner.view(0, 4), dtype=np.uint8)
    owner.close()
    owner.unlink()
    assert view.tolist() == [1, 2, 3, 4]


def test_creating_an_existing_name_fails_cleanly():
    name = new_prefix() + "_d"
    owner = Segment.create(name, 4096)
    try:
        with pytest.raises(FileExistsError):
            Segment.create(name, 4096)
    finally:
        owner.close()
        owner.unlink()


def test_view_outside_the_segment_is_refused():
    name = new_prefix() + "_o"
    owner = Segment.create(name, 4096)
    try:
        with pytest.raises(ValueError, match="outside"):
            owner.view(4000, 200)
    finally:
        owner.close()
        owner.unlink()


def test_lease_places_big_tensors_and_leaves_small_ones_inline(arena):
    big = np.arange(SHM_MIN_TENSOR_BYTES // 4, dtype=np.float32)
    small = np.arange(10, dtype=np.float32)
    lease = arena.lease(1, wire_nbytes([big, small]) * 2)
    ref = lease.place(big)
    assert lease.place(small) is None
    assert ref == ShmRef(lease.segment.name, 0)
    stored = np.frombuffer(lease.segment.view(0, big.nbytes), dtype=np.float32)
    np.testing.assert_array_equal(stored, big)
    del stored
    reply = lease.reply_area()
    assert reply["offset"] >= big.nbytes and reply["offset"] % 64 == 0
    assert reply["offset"] + reply["capacity"] == lease.segment.size


def test_released_segments_are_reused_and_extra_idle_ones_unlinked():
    arena = ShmArena(max_idle=1)
    try:
        first = arena.lease(1, 1000).segment.name
        arena.release(1)
        assert arena.lease(2, 1000).segment.name == first  # reused, not recreated
        second = arena.lease(3, 1000).segment.name  # 2 still leased: a new one
        arena.release(2)
        arena.release(3)
        assert arena.created == 2
        assert len(arena.segment_names) == 1
        gone = first if arena.segment_names == [second] else second
        assert not existing(gone)
    finally:
        names = arena.segment_names
        arena.close()
    assert not any(existing(name) for name in names)


def test_idle_memory_is_bounded_but_the_largest_segment_is_kept():
    arena = ShmArena(max_idle=4, max_idle_bytes=5 << 20)
    try:
        for request_id, size in enumerate((1 << 20, 2 << 20, 4 << 20, 8 << 20)):
            arena.lease(request_id, size)
        for request_id in range(4):
            arena.release(request_id)
        assert sorted(s.size for s in arena._idle) == [8 << 20]
    finally:
        arena.close()


def test_discarded_lease_is_never_reused(arena):
    name = arena.lease(1, 1000).segment.name
    arena.discard(1)
    assert not existing(name)
    assert arena.lease(2, 1000).segment.name != name


def test_close_unlinks_leased_and_idle_segments():
    arena = ShmArena()
    arena.lease(1, 10)
    arena.lease(2, 3 << 20)
    arena.release(1)
    names = arena.segment_names
    assert len(names) == 2 and all(existing(n) for n in names)
    arena.close()
    assert not any(existing(n) for n in names)
    assert arena.lease(3, 10) is None  # closed arenas lend nothing


def test_segment_sizes_round_up_for_reuse(arena):
    assert arena.lease(1, 10).segment.size >= MIN_SEGMENT_BYTES
    assert arena.lease(2, (3 << 20) + 1).segment.size == 4 << 20
    assert arena.lease(3, (20 << 20) + 1).segment.size == 24 << 20


def test_oversize_or_empty_leases_fall_back_to_the_socket():
    arena = ShmArena(max_segment_bytes=1 << 20)
    try:
        assert arena.lease(1, (1 << 20) + 1) is None
        assert arena.lease(2, 0) is None
    finally:
        arena.close()


def test_attachments_only_accept_the_connection_prefix(arena):
    lease = arena.lease(1, 100)
    stranger = ShmAttachments(new_prefix())
    try:
        with pytest.raises(ValueError, match="does not belong"):
            stranger(ShmRef(lease.segment.name, 0), 4)
    finally:
        stranger.close()
    mine = ShmAttachments(arena.prefix)
    try:
        lease.segment.buf[:4] = b"wxyz"
        assert bytes(mine(ShmRef(lease.segment.name, 0), 4)) == b"wxyz"
        with pytest.raises(ValueError, match="outside"):
            mine(ShmRef(lease.segment.name, lease.segment.size), 4)
    finally:
        mine.close()


@pytest.mark.parametrize("prefix", ["", "../etc", "x" * 30, "a b"])
def test_attachments_refuse_odd_prefixes(prefix):
    with pytest.raises(ValueError):
        ShmAttachments(prefix)


def test_attachments_keep_a_bounded_number_of_mappings():
    arena = ShmArena(max_idle=8)
    attachments = ShmAttachments(arena.prefix, capacity=2)
    try:
        names = [arena.lease(i, 100).segment.name for i in range(4)]
        for name in names:
            attachments.segment(name)
        assert len(attachments._segments) == 2
    finally:
        attachments.close()
        arena.close()


def test_reply_writer_fills_the_reply_area_then_falls_back_to_inline(arena):
    lease = arena.lease(1, 1 << 20)
    reply = lease.reply_area()
    attachments = ShmAttachments(arena.prefix)
    try:
        writer = ReplyWriter(attachments.segment(reply["segment"]), reply["offset"], reply["capacity"])
        first = np.full(reply["capacity"] // 8, 3, dtype=np.float32)  # half the area
        ref = writer(first)
        assert ref is not None and ref.offset == reply["offset"]
        assert writer(np.ones(reply["capacity"] // 4, np.float32)) is None  # no room left: inline
        assert writer(np.ones(4, np.float32)) is None  # tiny: inline
        landed = np.frombuffer(lease.segment.view(ref.offset, first.nbytes), np.float32)
        np.testing.assert_array_equal(landed, first)
        del landed
        with pytest.raises(ValueError):
            ReplyWriter(lease.segment, lease.segment.size - 10, 100)
    finally:
        attachments.close()


def test_probe_proves_both_sides_map_the_same_memory(arena):
    segment, nonce = probe_create(arena)
    try:
        assert not probe_confirmed(segment, nonce)
        assert probe_answer(arena.prefix, segment.name, nonce)
        assert probe_confirmed(segment, nonce)
    finally:
        segment.close()
        segment.unlink()


def test_probe_fails_for_wrong_nonce_foreign_prefix_or_missing_segment(arena):
    segment, nonce = probe_create(arena)
    try:
        assert not probe_answer(arena.prefix, segment.name, "00" * 16)
        assert not probe_answer(new_prefix(), segment.name, nonce)
        assert not probe_answer(arena.prefix, arena.prefix + "_missing", nonce)
        assert not probe_answer(arena.prefix, segment.name, "zz")
    finally:
        segment.close()
        segment.unlink()


@pytest.mark.skipif(not DEV_SHM.is_dir(), reason="Linux /dev/shm only")
def test_a_full_arena_life_cycle_leaves_nothing_in_dev_shm():
    arena = ShmArena()
    before = {p.name for p in DEV_SHM.iterdir() if p.name.startswith(arena.prefix)}
    for request_id in range(6):
        lease = arena.lease(request_id, (request_id + 1) << 20)
        lease.place(np.ones((request_id + 1) << 17, np.float32))
        if request_id % 2:
            arena.release(request_id)
    arena.close()
    after = {p.name for p in DEV_SHM.iterdir() if p.name.startswith(arena.prefix)}
    assert before == set() and after == set()


def test_wire_nbytes_counts_half_precision_and_alignment():
    a, b = np.ones(3, np.float32), np.ones(10, np.float32)
    assert wire_nbytes([a, b]) == 64 + 40
    assert wire_nbytes([a, b], "bfloat16") == 64 + 20
    assert wire_nbytes([np.ones(3, np.int64)], "float16") == 24
