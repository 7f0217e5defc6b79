"""Pure encoding tests: frame headers, envelope messages, status codes."""

import pickle

import pytest

from shim.ttrpc import Code, TtrpcError
from shim.ttrpc import messages
from shim.ttrpc.framing import (HEADER_SIZE, MAX_PAYLOAD, FrameError, FrameHeader, FrameType,
                                decode_header, encode_frame, encode_header)


def test_frame_layout_is_big_endian_length_stream_type_flags():
    frame = encode_frame(5, FrameType.REQUEST, b"abc", flags=2)
    assert frame == b"\x00\x00\x00\x03" b"\x00\x00\x00\x05" b"\x01" b"\x02" b"abc"
    assert decode_header(frame[:HEADER_SIZE]) == FrameHeader(3, 5, 1, 2)


def test_header_round_trip_extremes():
    header = FrameHeader(MAX_PAYLOAD, 0xFFFFFFFF, 0xFF, 0xFF)
    assert decode_header(encode_header(header)) == header


def test_decode_keeps_oversized_length_for_the_caller_to_reject():
    raw = b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00"
    assert decode_header(raw).length == 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 9, 11])
def test_decode_rejects_wrong_header_size(size):
    with pytest.raises(FrameError):
        decode_header(b"\x00" * size)


@pytest.mark.parametrize("header", [
    FrameHeader(MAX_PAYLOAD + 1, 1, 1, 0),
    FrameHeader(0, 1 << 32, 1, 0),
    FrameHeader(0, -1, 1, 0),
    FrameHeader(0, 1, 256, 0),
    FrameHeader(0, 1, 1, 256),
])
def test_encode_rejects_out_of_range_fields(header):
    with pytest.raises(FrameError):
        encode_header(header)


def test_request_field_numbers_match_the_ttrpc_wire_format():
    request = messages.Request(service="s", method="m", payload=b"p", timeout_nano=2,
                               metadata=[messages.KeyValue(key="k", value="v")])
    assert request.SerializeToString() == (
        b"\x0a\x01s" b"\x12\x01m" b"\x1a\x01p" b"\x20\x02" b"\x2a\x06\x0a\x01k\x12\x01v")


def test_response_field_numbers_match_the_ttrpc_wire_format():
    response = messages.Response(payload=b"x")
    response.status.code = 5
    response.status.message = "nf"
    assert response.SerializeToString() == b"\x0a\x06\x08\x05\x12\x02nf" b"\x12\x01x"


def test_response_without_status_is_distinguishable():
    # containerd 1.6 sends success responses with no status at all.
    response = messages.Response.FromString(b"\x12\x01x")
    assert not response.HasField("status")
    assert response.payload == b"x"


def test_code_from_wire_maps_unknown_values():
    assert Code.from_wire(5) is Code.NOT_FOUND
    assert Code.from_wire(99) is Code.UNKNOWN


def test_ttrpc_error_carries_code_and_message():
    error = TtrpcError(Code.NOT_FOUND, "no such task")
    assert (error.code, error.message) == (Code.NOT_FOUND, "no such task")
    assert str(error) == "NOT_FOUND: no such task"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message) == (error.code, error.message)
    assert TtrpcError(3).code is Code.INVALID_ARGUMENT
