"""Reading and writing whole ttrpc frames on asyncio streams (shared by server and client)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from .framing import HEADER_SIZE, MAX_PAYLOAD, FrameHeader, decode_header, encode_header

_DISCARD_CHUNK = 64 * 1024


class Frame(NamedTuple):
    header: FrameHeader
    payload: bytes | None  # None: the frame exceeded MAX_PAYLOAD and its bytes were dropped


class ConnectionClosed(Exception):
    """The peer went away, cleanly between frames or in the middle of one."""


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; an oversized payload is consumed without buffering it."""
    try:
        header = decode_header(await reader.readexactly(HEADER_SIZE))
        if header.length > MAX_PAYLOAD:
            remaining = header.length
            while remaining:
                remaining -= len(await reader.readexactly(min(remaining, _DISCARD_CHUNK)))
            return Frame(header, None)
        return Frame(header, await reader.readexactly(header.length))
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed("truncated frame" if exc.partial else "end of stream") from None
    except OSError as exc:
        raise ConnectionClosed(str(exc)) from None


class FrameWriter:
    """Serializes frame writes so concurrent senders never interleave or race on drain()."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()

    async def send(self, stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> None:
        """Raises FrameError for an unencodable frame, ConnectionClosed if the peer is gone."""
        header = encode_header(FrameHeader(len(payload), stream_id, frame_type, flags))
        async with self._lock:
            if self._writer.is_closing():
                raise ConnectionClosed("connection is closing")
            try:
                self._writer.write(header)
                self._writer.write(payload)
                await self._writer.drain()
            except OSError as exc:
                raise ConnectionClosed(str(exc)) from None

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Close, giving unsent frames a moment to flush; a peer that never reads is cut off."""
        self._writer.close()
        try:
            async with asyncio.timeout(flush_timeout):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass  # already reset by the peer: nothing left to release
