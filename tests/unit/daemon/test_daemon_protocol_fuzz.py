"""The frame decoder under fuzzed headers: whatever a well-framed header holds, the
decoder answers with one typed message and stays in step for the next frame; it never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from daemon.wire.protocol import (
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Rejected,
    Request,
    Response,
    encode_request,
    frame_bytes,
)
from tests.helpers.fuzz_frames import frame, headers, payload_lengths

DECODER_EXAMPLES = 300  # README "Robustness" quotes this figure
PING = frame_bytes(encode_request(Request(4242, "ping")))
ANSWERABLE = {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION}


@settings(
    max_examples=DECODER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers, payload_lengths)
def test_any_well_framed_header_gives_one_typed_message_and_the_stream_stays_in_step(header, payload_len):
    decoder = FrameDecoder()
    messages = decoder.feed(frame(header, payload_len) + PING)
    assert len(messages) == 2
    first, ping = messages
    assert isinstance(first, (Request, Response, ErrorResponse, Rejected))
    if isinstance(first, Rejected):
        assert first.code in ANSWERABLE and first.message and len(first.message) < 2000
        assert type(first.id) is int and 0 <= first.id < 2**53
        first.message.encode("utf-8")  # always encodable in the error answer
    assert ping == Request(4242, "ping", {}, ())
    assert not decoder.in_frame
