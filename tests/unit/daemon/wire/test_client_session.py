"""ClientSession, Sans-I/O: hello, authentication token, shared-memory negotiation, request ids,
answer matching, reply sizing and the ownership of answer arrays — bytes in, events out, with
no socket. The daemon's side is played by the real codec and the server's shared-memory classes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from daemon.wire.protocol import (
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    ProtocolError,
    Request,
    Response,
    encode_error,
    encode_request,
    encode_response,
    frame_bytes,
)
from daemon.wire.session import (
    Answered,
    ClientSession,
    DaemonError,
    Failed,
    pixels_reply_bytes,
    vae_decode_call,
)
from daemon.wire.shm import SHM_MIN_TENSOR_BYTES, ReplyWriter, Segment, ShmAttachments, probe_answer

BIG = SHM_MIN_TENSOR_BYTES // 4  # float32 elements that go through shared memory


def segment_exists(name: str) -> bool:
    try:
        Segment.attach(name).close()
    except OSError:
        return False
    return True


class DaemonEnd:
    """The daemon's half of the conversation, from the real decoder and shm classes."""

    def __init__(self, *, shm: bool = True, confirm_probe: bool = True, limits: dict | None = None):
        self.decoder = FrameDecoder()
        self.shm = shm
        self.confirm_probe = confirm_probe
        self.limits = limits or {"max_payload_bytes": 1 << 30, "max_header_bytes": 1 << 20}
        self.attachments: ShmAttachments | None = None

    def requests(self, session: ClientSession) -> list[Request]:
        received = self.decoder.feed(frame_bytes(session.data_to_send()))
        assert all(isinstance(r, Request) for r in received), received
        return received

    def hello_answer(self, hello: Request) -> bytes:
        offer = hello.options.get("shm")
        shm_ok = False
        if self.shm and offer is not None:
            probe = offer["probe"]
            shm_ok = (
                probe_answer(offer["prefix"], probe["segment"], probe["nonce"])
                if self.confirm_probe
                else True
            )
            self.attachments = ShmAttachments(offer["prefix"])
            self.decoder.shm_reader = self.attachments
        return self.answer(hello, {"version": 1, "shm": shm_ok, "limits": self.limits})

    def answer(self, request: Request, result: dict, tensors=()) -> bytes:
        reply = request.options.get("shm_reply")
        place = None
        if reply is not None:
            place = ReplyWriter(
                self.attachments.segment(reply["segment"]), reply["offset"], reply["capacity"]
            )
        return frame_bytes(encode_response(Response(request.id, result, tuple(tensors)), place=place))

    def close(self) -> None:
        if self.attachments is not None:
            self.attachments.close()


@pytest.fixture
def daemon():
    end = DaemonEnd()
    yield end
    end.close()


def connected(daemon: DaemonEnd, **kwargs) -> ClientSession:
    session = ClientSession(client_name="test-client", **kwargs)
    session.send_hello()
    (hello,) = daemon.requests(session)
    session.receive_data(daemon.hello_answer(hello))
    (event,) = session.events_received()
    assert isinstance(event, Answered) and event.request_id == hello.id
    return session


def test_hello_names_versions_client_and_token_and_keeps_the_daemon_limits(daemon):
    session = ClientSession(client_name="comfyui-8188", token="tok")
    hello_id = session.send_hello()
    (hello,) = daemon.requests(session)
    assert (hello.id, hello.op) == (hello_id, "hello")
    assert hello.options == {"versions": [1], "client": "comfyui-8188", "token": "tok"}  # no shm offer
    session.receive_data(daemon.hello_answer(hello))
    (event,) = session.events_received()
    assert event.result["version"] == 1 and session.hello == event.result
    assert session.server_limits["max_payload_bytes"] == 1 << 30
    assert not session.uses_shared_memory


def test_shared_memory_is_used_only_after_the_daemon_proved_it_maps_the_probe(daemon):
    session = ClientSession(client_name="c", shared_memory=True)
    session.send_hello()
    (hello,) = daemon.requests(session)
    probe_name = hello.options["shm"]["probe"]["segment"]
    assert probe_name.startswith(hello.options["shm"]["prefix"]) and segment_exists(probe_name)
    assert not session.uses_shared_memory
    session.receive_data(daemon.hello_answer(hello))
    assert session.uses_shared_memory
    assert not segment_exists(probe_name)  # the probe is gone once answered
    session.close()


def test_a_daemon_that_claims_shared_memory_without_answering_the_probe_gets_the_socket():
    daemon = DaemonEnd(confirm_probe=False)
    session = ClientSession(client_name="c", shared_memory=True)
    session.send_hello()
    (hello,) = daemon.requests(session)
    session.receive_data(daemon.hello_answer(hello))
    assert not session.uses_shared_memory and session.segment_names == []
    assert not segment_exists(hello.options["shm"]["probe"]["segment"])
    session.send_request("echo", {}, (np.ones(BIG, np.float32),))
    (request,) = daemon.requests(session)
    assert "shm_reply" not in request.options  # inline, through the socket
    daemon.close()


def test_answers_are_matched_to_requests_by_id_in_any_order(daemon):
    session = connected(daemon)
    first = session.send_request("status")
    second = session.send_request("models")
    assert second > first and session.in_flight == {first, second}
    one, two = daemon.requests(session)
    session.receive_data(daemon.answer(two, {"which": "models"}) + daemon.answer(one, {"which": "status"}))
    events = session.events_received()
    assert [(e.request_id, e.result["which"]) for e in events] == [(second, "models"), (first, "status")]
    assert session.in_flight == frozenset()


def test_error_answers_become_failed_events_with_the_daemon_code(daemon):
    session = connected(daemon)
    request_id = session.send_request("vae_decode")
    daemon.requests(session)
    session.receive_data(frame_bytes(encode_error(ErrorResponse(request_id, ErrorCode.OOM, "no room", True))))
    (event,) = session.events_received()
    assert isinstance(event, Failed) and event.request_id == request_id
    assert (event.error.code, event.error.message, event.error.retryable) == (ErrorCode.OOM, "no room", True)
    assert session.failure is None  # one request failed; the connection is fine


def test_a_connection_error_fails_every_request_in_flight(daemon):
    session = connected(daemon)
    ids = {session.send_request("status"), session.send_request("models")}
    session.receive_data(frame_bytes(encode_error(ErrorResponse(0, ErrorCode.BUSY, "too many", True))))
    events = session.events_received()
    assert {e.request_id for e in events} == ids and all(isinstance(e, Failed) for e in events)
    assert isinstance(session.failure, DaemonError) and session.failure.code is ErrorCode.BUSY


def test_a_malformed_answer_fails_its_request_as_internal(daemon):
    session = connected(daemon)
    request_id = session.send_request("status")
    descriptor = {"dtype": "complex64", "shape": [1], "nbytes": 8}  # not a wire dtype
    header = json.dumps({"v": 1, "id": request_id, "ok": True, "result": {}, "tensors": [descriptor]})
    session.receive_data(struct.pack(">4sIQ", b"LUNA", len(header), 0) + header.encode())
    (event,) = session.events_received()
    assert isinstance(event, Failed) and event.error.code is ErrorCode.INTERNAL
    assert "malformed answer" in event.error.message


def test_a_request_from_the_daemon_is_a_protocol_error(daemon):
    session = connected(daemon)
    with pytest.raises(ProtocolError, match="sent a request"):
        session.receive_data(frame_bytes(encode_request(Request(5, "ping"))))


def test_the_late_answer_to_an_abandoned_request_is_dropped(daemon):
    session = connected(daemon)
    request_id = session.send_request("status")
    (request,) = daemon.requests(session)
    session.abandon(request_id)
    session.receive_data(daemon.answer(request, {}))
    assert session.events_received() == []


def test_a_request_over_the_daemon_limit_is_refused_before_anything_is_queued():
    daemon = DaemonEnd(limits={"max_payload_bytes": 1 << 16, "max_header_bytes": 1024})
    session = connected(daemon)
    with pytest.raises(DaemonError) as caught:
        session.send_request("echo", {}, (np.zeros(1 << 16, np.float32),))
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert session.data_to_send() == [] and session.in_flight == frozenset()


def test_big_tensors_go_into_the_segment_and_the_reply_area_is_sized_for_the_answer(daemon):
    session = connected(daemon, shared_memory=True)
    latent = np.random.default_rng(0).random((1, 4, 32, 32), dtype=np.float32)
    session.send(vae_decode_call(latent, model="default", tile=None))
    (request,) = daemon.requests(session)
    reply = request.options["shm_reply"]
    assert reply["capacity"] >= pixels_reply_bytes(latent) and reply["offset"] >= latent.nbytes
    np.testing.assert_array_equal(request.tensors[0], latent)  # read through the daemon's mapping
    session.close()


def test_answer_arrays_are_views_on_shared_memory_that_no_later_request_writes_over(daemon):
    session = connected(daemon, shared_memory=True)
    first_values = np.full(BIG, 1.0, np.float32)
    session.send_request("echo", {}, (first_values,))
    (request,) = daemon.requests(session)
    session.receive_data(daemon.answer(request, {}, request.tensors))
    (first,) = session.events_received()
    held = first.tensors[0]
    segment = request.options["shm_reply"]["segment"]
    assert held.flags.writeable
    del first, request

    session.send_request("echo", {}, (np.full(BIG, 2.0, np.float32),))
    (second_request,) = daemon.requests(session)
    second_segment = second_request.options["shm_reply"]["segment"]
    assert second_segment != segment  # still in use: not lent
    session.receive_data(daemon.answer(second_request, {}, second_request.tensors))
    (second,) = session.events_received()
    np.testing.assert_array_equal(held, first_values)
    np.testing.assert_array_equal(second.tensors[0], 2.0)
    del second, second_request

    del held  # now the first segment is free again and comes back into use
    session.send_request("echo", {}, (np.full(BIG, 3.0, np.float32),))
    (third_request,) = daemon.requests(session)
    assert third_request.options["shm_reply"]["segment"] in {segment, second_segment}  # reused
    assert len(session.segment_names) == 2  # no third segment
    session.close()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="Linux /dev/shm only")
def test_close_unlinks_every_segment_and_held_answer_arrays_stay_valid(daemon):
    session = connected(daemon, shared_memory=True)
    values = np.arange(BIG, dtype=np.float32)
    session.send_request("echo", {}, (values,))
    (request,) = daemon.requests(session)
    session.receive_data(daemon.answer(request, {}, request.tensors))
    (answer,) = session.events_received()
    del request
    session.send_request("echo", {}, (values,))  # a second segment, leased, never answered
    names = session.segment_names
    prefix = session.shm_prefix
    assert len(names) == 2
    session.close()
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)]
    np.testing.assert_array_equal(answer.tensors[0], values)
