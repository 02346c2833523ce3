"""The Sans-I/O codec, without sockets: round trips, split reads at every boundary, truncated
frames, oversize lengths, garbage, and headers that lie about dtypes, shapes and sizes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daemon.wire.protocol import (
    MAGIC,
    PREFIX,
    PROTOCOL_VERSION,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Limits,
    OpError,
    ProtocolError,
    Rejected,
    Request,
    Response,
    ShmRef,
    bfloat16_bits_to_float32,
    decode_all,
    encode_error,
    encode_request,
    encode_response,
    float32_to_bfloat16_bits,
    frame_bytes,
)

WIRE_NUMPY_DTYPES = [np.float32, np.float16, np.uint8, np.int32, np.int64]


def raw_frame(
    header: dict | bytes, payload: bytes = b"", *, magic: bytes = MAGIC, payload_len: int | None = None
) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(payload) if payload_len is None else payload_len
    return PREFIX.pack(magic, len(body), length) + body + payload


def request_header(**overrides) -> dict:
    header = {"v": PROTOCOL_VERSION, "id": 5, "op": "vae_decode", "options": {}, "tensors": []}
    header.update(overrides)
    return header


arrays = st.sampled_from(WIRE_NUMPY_DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
        elements={"allow_nan": False} if np.dtype(dtype).kind == "f" else None,
    )
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def assert_same_tensors(got, expected):
    assert len(got) == len(expected)
    for actual, wanted in zip(got, expected):
        wanted_dtype = np.float32 if wanted.dtype == np.float16 else wanted.dtype
        assert actual.dtype == wanted_dtype
        assert actual.shape == wanted.shape
        np.testing.assert_array_equal(actual, wanted.astype(wanted_dtype))


@settings(max_examples=60, deadline=None)
@given(
    request_id=st.integers(0, 2**53 - 1),
    op=st.text(min_size=1, max_size=64),
    options=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    tensors=st.lists(arrays, max_size=4),
)
def test_request_round_trips_through_encode_and_decode(request_id, op, options, tensors):
    (decoded,) = decode_all(frame_bytes(encode_request(Request(request_id, op, options, tuple(tensors)))))
    assert isinstance(decoded, Request)
    assert (decoded.id, decoded.op, decoded.options) == (request_id, op, options)
    assert_same_tensors(decoded.tensors, tensors)


@settings(max_examples=40, deadline=None)
@given(
    result=st.dictionaries(st.text(max_size=8), json_values, max_size=4), tensors=st.lists(arrays, max_size=3)
)
def test_response_round_trips(result, tensors):
    (decoded,) = decode_all(frame_bytes(encode_response(Response(9, result, tuple(tensors)))))
    assert isinstance(decoded, Response) and decoded.id == 9 and decoded.result == result
    assert_same_tensors(decoded.tensors, tensors)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_response_round_trips_every_code(code):
    (decoded,) = decode_all(frame_bytes(encode_error(ErrorResponse(3, code, "what went wrong", True))))
    assert decoded == ErrorResponse(3, code, "what went wrong", True)


def test_error_with_unknown_code_from_a_newer_peer_becomes_internal():
    header = {"v": 1, "id": 4, "ok": False, "error": {"code": "FROBNICATED", "message": "x"}}
    (decoded,) = decode_all(raw_frame(header))
    assert decoded.code is ErrorCode.INTERNAL and "FROBNICATED" in decoded.message


def several_frames() -> tuple[bytes, list]:
    tensors_a = (np.arange(20, dtype=np.float32).reshape(4, 5), np.arange(3, dtype=np.uint8))
    messages = [
        Request(1, "ping"),
        Request(2, "vae_encode", {"model": "default", "tile": None}, tensors_a),
        Response(2, {"ok": 1}, (np.full((2, 2), 7, dtype=np.int64),)),
        ErrorResponse(3, ErrorCode.BUSY, "later", True),
    ]
    data = b"".join(
        frame_bytes(
            encode_request(m)
            if isinstance(m, Request)
            else encode_response(m)
            if isinstance(m, Response)
            else encode_error(m)
        )
        for m in messages
    )
    return data, messages


def assert_messages_equal(decoded, messages):
    assert len(decoded) == len(messages)
    for got, wanted in zip(decoded, messages):
        assert type(got) is type(wanted) and got.id == wanted.id
        if isinstance(wanted, ErrorResponse):
            assert got == wanted
        else:
            assert_same_tensors(got.tensors, wanted.tensors)


def test_split_reads_at_every_boundary_decode_the_same_messages():
    data, messages = several_frames()
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        decoded = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        decoder.eof()
        assert_messages_equal(decoded, messages)


def test_byte_by_byte_feeding_decodes_the_same_messages():
    data, messages = several_frames()
    decoder = FrameDecoder()
    decoded = []
    for index in range(len(data)):
        decoded += decoder.feed(data[index : index + 1])
    assert_messages_equal(decoded, messages)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.integers(7, 100_000), min_size=1, max_size=20))
def test_zero_copy_receive_path_matches_feed_for_any_chunking(chunks):
    big = np.random.default_rng(1).random((130, 131), dtype=np.float32)  # > 64 KiB: direct reads
    data = frame_bytes(
        encode_request(Request(1, "x", {}, (big, np.arange(5, dtype=np.int32))))
    ) + frame_bytes(encode_request(Request(2, "ping")))
    decoder = FrameDecoder()
    decoded, position, index = [], 0, 0
    while position < len(data):
        buffer = decoder.get_buffer()
        size = min(len(buffer), len(data) - position, chunks[index % len(chunks)])
        index += 1
        buffer[:size] = data[position : position + size]
        del buffer
        position += size
        decoded += decoder.buffer_updated(size)
    assert [m.id for m in decoded] == [1, 2]
    np.testing.assert_array_equal(decoded[0].tensors[0], big)


def test_large_payload_is_received_straight_into_the_tensor_buffer():
    big = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
    data = frame_bytes(encode_request(Request(1, "x", {}, (big,))))
    header_end = len(data) - big.nbytes
    decoder = FrameDecoder()
    assert decoder.feed(data[: header_end + 10]) == []
    buffer = decoder.get_buffer()
    assert len(buffer) == big.nbytes - 10  # exactly the rest of the payload, not a scratch area
    buffer[:] = data[header_end + 10 :]
    del buffer
    (request,) = decoder.buffer_updated(big.nbytes - 10)
    np.testing.assert_array_equal(request.tensors[0], big)


def test_truncated_frame_is_reported_at_eof_at_every_cut():
    data = frame_bytes(encode_request(Request(1, "x", {}, (np.ones(10, np.float32),))))
    for cut in range(1, len(data)):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) == []
        assert decoder.in_frame
        with pytest.raises(ProtocolError, match="middle of a frame"):
            decoder.eof()


def test_idle_decoder_is_not_in_a_frame_and_eof_is_clean():
    decoder = FrameDecoder()
    decoder.feed(frame_bytes(encode_request(Request(1, "ping"))))
    assert not decoder.in_frame
    decoder.eof()


def test_oversize_payload_length_is_refused_before_any_allocation():
    decoder = FrameDecoder(Limits(max_payload_bytes=1024))
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(PREFIX.pack(MAGIC, 10, 2**63))
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_oversize_header_length_is_refused():
    decoder = FrameDecoder(Limits(max_header_bytes=64))
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(PREFIX.pack(MAGIC, 65, 0))
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_bad_magic_is_a_protocol_error_and_the_decoder_stays_dead():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="magic"):
        decoder.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ProtocolError):
        decoder.feed(frame_bytes(encode_request(Request(1, "ping"))))


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes_the_decoder(garbage):
    decoder = FrameDecoder(Limits(max_payload_bytes=1 << 16))
    try:
        messages = decoder.feed(garbage)
        decoder.eof()
    except ProtocolError:
        return
    assert all(isinstance(m, (Request, Response, ErrorResponse, Rejected)) for m in messages)


@settings(max_examples=200, deadline=None)
@given(header=st.binary(min_size=2, max_size=100), payload=st.binary(max_size=50))
def test_garbage_header_inside_a_valid_prefix_is_a_protocol_error_or_a_rejection(header, payload):
    decoder = FrameDecoder()
    try:
        messages = decoder.feed(raw_frame(header, payload))
    except ProtocolError:
        return
    assert len(messages) == 1 and isinstance(messages[0], Rejected)


@pytest.mark.parametrize("header", [b"[1, 2]", b"{bad json", b"\xff\xfe", b'{"v": NaN}', b"nul"])
def test_header_that_is_not_a_json_object_is_a_protocol_error(header):
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(raw_frame(header))


@pytest.mark.parametrize(
    ("descriptor", "fragment"),
    [
        ({"dtype": "float64", "shape": [2], "nbytes": 16}, "not allowed"),
        ({"dtype": "object", "shape": [1], "nbytes": 8}, "not allowed"),
        ({"dtype": "float32", "shape": [2, 2], "nbytes": 12}, "does not match"),
        ({"dtype": "float32", "shape": [-1], "nbytes": 4}, "non-negative"),
        ({"dtype": "float32", "shape": [2.0], "nbytes": 8}, "non-negative"),
        ({"dtype": "float32", "shape": "2", "nbytes": 8}, "list"),
        ({"dtype": "uint8", "shape": [1] * 9, "nbytes": 1}, "dimensions"),
        ({"dtype": "uint8", "shape": [1 << 20, 1 << 20], "nbytes": 1 << 40}, "elements"),
        ({"dtype": "float32", "shape": [1], "nbytes": 4, "shm": {"segment": "", "offset": 0}}, "shm"),
        ("float32", "object"),
    ],
)
def test_bad_tensor_descriptor_is_rejected_with_the_request_id(descriptor, fragment):
    payload = b"\0" * 16
    header = request_header(tensors=[descriptor])
    decoder = FrameDecoder()
    decoded = decoder.feed(raw_frame(header, payload))
    (rejected,) = decoded
    assert isinstance(rejected, Rejected) and rejected.id == 5
    assert rejected.code is ErrorCode.BAD_REQUEST and fragment in rejected.message
    # framing survived: the next frame decodes normally
    (following,) = decoder.feed(frame_bytes(encode_request(Request(6, "ping"))))
    assert following.id == 6


def test_payload_length_that_disagrees_with_the_descriptors_is_rejected():
    header = request_header(tensors=[{"dtype": "float32", "shape": [4], "nbytes": 16}])
    (rejected,) = decode_all(raw_frame(header, b"\0" * 20))
    assert isinstance(rejected, Rejected) and "payload is 20 bytes" in rejected.message


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (request_header(v=2), ErrorCode.UNSUPPORTED_VERSION),
        (request_header(v="1"), ErrorCode.UNSUPPORTED_VERSION),
        (request_header(id=-1), ErrorCode.BAD_REQUEST),
        (request_header(id=2**60), ErrorCode.BAD_REQUEST),
        (request_header(op=""), ErrorCode.BAD_REQUEST),
        (request_header(op=7), ErrorCode.BAD_REQUEST),
        (request_header(options=[1]), ErrorCode.BAD_REQUEST),
        (request_header(tensors=[{}] * 9), ErrorCode.TOO_LARGE),
        ({"v": 1, "id": 3}, ErrorCode.BAD_REQUEST),
    ],
)
def test_header_rule_violations_are_rejected_not_fatal(header, code):
    (rejected,) = decode_all(raw_frame(header))
    assert isinstance(rejected, Rejected) and rejected.code is code


def test_shared_memory_descriptor_without_a_reader_is_rejected():
    header = request_header(
        tensors=[
            {"dtype": "uint8", "shape": [4], "nbytes": 4, "shm": {"segment": "lu0123456789_1", "offset": 0}}
        ]
    )
    (rejected,) = decode_all(raw_frame(header))
    assert isinstance(rejected, Rejected) and "not negotiated" in rejected.message


def test_shared_memory_descriptor_is_resolved_through_the_reader():
    store = np.arange(64, dtype=np.uint8)

    def reader(ref: ShmRef, nbytes: int) -> memoryview:
        assert ref == ShmRef("lu0123456789_1", 8)
        return memoryview(store)[ref.offset : ref.offset + nbytes]

    header = request_header(
        tensors=[
            {"dtype": "int32", "shape": [2], "nbytes": 8, "shm": {"segment": "lu0123456789_1", "offset": 8}}
        ]
    )
    decoder = FrameDecoder(shm_reader=reader)
    (request,) = decoder.feed(raw_frame(header))
    np.testing.assert_array_equal(request.tensors[0], store[8:16].view("<i4"))
    assert decoder.take_shm_bytes() == 8


def test_unreadable_shared_memory_is_rejected_naming_the_segment():
    def reader(ref, nbytes):
        raise FileNotFoundError("gone")

    header = request_header(
        tensors=[
            {"dtype": "uint8", "shape": [4], "nbytes": 4, "shm": {"segment": "lu0123456789_9", "offset": 0}}
        ]
    )
    (rejected,) = FrameDecoder(shm_reader=reader).feed(raw_frame(header))
    assert isinstance(rejected, Rejected) and "lu0123456789_9" in rejected.message


def test_placer_moves_big_tensors_out_of_the_payload():
    big, small = np.ones(1000, np.float32), np.ones(3, np.float32)
    placed = []

    def place(array):
        if array.nbytes > 100:
            placed.append(array)
            return ShmRef("lu0123456789_a", 0)
        return None

    data = frame_bytes(encode_request(Request(1, "x", {}, (big, small)), place=place))
    _, header_len, payload_len = PREFIX.unpack(data[: PREFIX.size])
    assert payload_len == small.nbytes and len(placed) == 1
    header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    assert header["tensors"][0]["shm"] == {"segment": "lu0123456789_a", "offset": 0}


def test_tensors_are_aligned_in_the_payload_and_sent_without_copies():
    odd = np.arange(3, dtype=np.uint8)
    big = np.arange(100_000, dtype=np.float32)
    buffers = encode_request(Request(1, "x", {}, (odd, big)))
    assert any(
        isinstance(b, memoryview) and np.shares_memory(np.frombuffer(b, np.uint8), big) for b in buffers
    )
    (request,) = decode_all(frame_bytes(buffers))
    assert request.tensors[1].ctypes.data % 64 == 0


@pytest.mark.parametrize("wire_dtype", ["float16", "bfloat16"])
def test_half_precision_wire_dtypes_halve_bytes_and_decode_to_float32(wire_dtype):
    values = np.linspace(-4, 4, 4096, dtype=np.float32).reshape(64, 64)
    full = frame_bytes(encode_response(Response(1, {}, (values,))))
    half = frame_bytes(encode_response(Response(1, {}, (values,)), wire_dtype=wire_dtype))
    assert len(half) < len(full) * 0.55
    (decoded,) = decode_all(half)
    assert decoded.tensors[0].dtype == np.float32
    np.testing.assert_allclose(decoded.tensors[0], values, rtol=1e-2, atol=1e-2)


def test_bfloat16_rounding_is_nearest_even_and_keeps_nan_and_inf():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, -np.inf, np.nan, 0.0], dtype=np.float32)
    back = bfloat16_bits_to_float32(float32_to_bfloat16_bits(values))
    np.testing.assert_array_equal(back[:6], [1.0, 1.0, 1.015625, -2.5, np.inf, -np.inf])
    assert np.isnan(back[6]) and back[7] == 0.0


@pytest.mark.parametrize("array", [np.zeros(3, np.float64), np.zeros(3, bool), np.zeros(2, complex)])
def test_encoder_refuses_dtypes_outside_the_whitelist(array):
    with pytest.raises(TypeError, match="not allowed"):
        encode_response(Response(1, {}, (array,)))


def test_encoder_refuses_nan_in_json_and_bad_ids():
    with pytest.raises(ValueError):
        encode_response(Response(1, {"x": float("nan")}))
    with pytest.raises(ValueError):
        encode_request(Request(-1, "ping"))
    with pytest.raises(ValueError):
        encode_request(Request(1, ""))


def test_big_endian_and_strided_inputs_are_sent_as_little_endian_c_order():
    values = np.arange(12, dtype=">i4").reshape(3, 4).T
    (decoded,) = decode_all(frame_bytes(encode_request(Request(1, "x", {}, (values,)))))
    np.testing.assert_array_equal(decoded.tensors[0], values)


def test_payload_buffer_is_reused_only_when_no_array_uses_it():
    big = np.arange(1 << 19, dtype=np.float32)  # 2 MiB: above the recycling threshold
    first_frame = frame_bytes(encode_request(Request(1, "x", {}, (big,))))
    other_frame = frame_bytes(encode_request(Request(2, "x", {}, (big * 2,))))
    decoder = FrameDecoder()
    (first,) = decoder.feed(first_frame)
    kept = first.tensors[0]
    del first
    (second,) = decoder.feed(other_frame)
    np.testing.assert_array_equal(kept, big)  # still in use, so never written over
    assert not np.shares_memory(kept, second.tensors[0])
    second_address = second.tensors[0].ctypes.data  # an int: holds no reference
    del second
    (third,) = decoder.feed(first_frame)
    assert third.tensors[0].ctypes.data == second_address  # free again: reused, not reallocated
    assert third.tensors[0].ctypes.data % 64 == 0
    np.testing.assert_array_equal(third.tensors[0], big)


@pytest.mark.parametrize(
    "keep",
    [
        lambda array: array[2:].reshape(-1, 2)[::2],  # a view of a view of a view
        lambda array: memoryview(array),
        lambda array: np.asarray(array).view(np.uint8),
    ],
    ids=["nested view", "memoryview", "reinterpreted view"],
)
def test_payload_buffer_is_not_reused_while_anything_derived_from_a_tensor_lives(keep):
    big = np.arange(1 << 19, dtype=np.float32)
    frame = frame_bytes(encode_request(Request(1, "x", {}, (big,))))
    decoder = FrameDecoder()
    (first,) = decoder.feed(frame)
    address = first.tensors[0].ctypes.data
    kept = keep(first.tensors[0])
    expected = np.array(kept, copy=True)
    del first
    (second,) = decoder.feed(frame_bytes(encode_request(Request(2, "x", {}, (big * 3,)))))
    assert second.tensors[0].ctypes.data != address  # the first payload is still in use
    np.testing.assert_array_equal(np.asarray(kept), expected)  # never written over


def test_op_error_carries_code_message_and_retryable():
    error = OpError(ErrorCode.OOM, "out of memory", retryable=True)
    assert (error.code, error.message, error.retryable) == (ErrorCode.OOM, "out of memory", True)
    assert "OOM" in str(error)


def test_limits_validate_their_values():
    with pytest.raises(ValueError):
        Limits(max_in_flight=0)
    with pytest.raises(ValueError):
        Limits(read_timeout=0)
    assert Limits().to_dict()["max_tensors"] == 8


def test_frame_prefix_is_big_endian_magic_and_lengths():
    data = frame_bytes(encode_request(Request(1, "ping")))
    magic, header_len, payload_len = struct.unpack(">4sIQ", data[:16])
    assert magic == b"LUNA" and payload_len == 0 and len(data) == 16 + header_len
