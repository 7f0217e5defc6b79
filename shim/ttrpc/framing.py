"""ttrpc frame header encoding (pure, no I/O).

A frame is a 10-byte big-endian header — u32 payload length, u32 stream id, u8 type, u8 flags —
followed by the payload.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER_SIZE = 10
MAX_PAYLOAD = 4 << 20  # 4 MiB, the limit every ttrpc implementation enforces

_HEADER = struct.Struct(">IIBB")


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class FrameHeader(NamedTuple):
    length: int
    stream_id: int
    type: int  # a FrameType value, or whatever unknown byte the peer sent
    flags: int = 0


class FrameError(ValueError):
    """A frame that cannot be encoded (bad field values or oversized payload)."""


def encode_header(header: FrameHeader) -> bytes:
    if not 0 <= header.stream_id <= 0xFFFFFFFF:
        raise FrameError(f"stream id {header.stream_id} out of range")
    if not 0 <= header.type <= 0xFF or not 0 <= header.flags <= 0xFF:
        raise FrameError(f"frame type {header.type} / flags {header.flags} out of range")
    if not 0 <= header.length <= MAX_PAYLOAD:
        raise FrameError(f"payload of {header.length} bytes exceeds the {MAX_PAYLOAD} byte limit")
    return _HEADER.pack(header.length, header.stream_id, header.type, header.flags)


def encode_frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    return encode_header(FrameHeader(len(payload), stream_id, frame_type, flags)) + payload


def decode_header(data: bytes) -> FrameHeader:
    """Decode a header; the length is returned as sent (callers check it against MAX_PAYLOAD)."""
    if len(data) != HEADER_SIZE:
        raise FrameError(f"frame header must be {HEADER_SIZE} bytes, got {len(data)}")
    return FrameHeader(*_HEADER.unpack(data))
