"""ttrpc client: unary calls multiplexed on one connection over odd stream ids."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from . import messages
from .framing import MAX_PAYLOAD, FrameType
from .status import Code, TtrpcError
from .transport import ConnectionClosed, FrameWriter, read_frame

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_MAX_STREAM_ID = 0xFFFFFFFF


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._frames = FrameWriter(writer)
        self._next_stream_id = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._closed_reason: str | None = None
        self._receiver = asyncio.get_running_loop().create_task(self._receive_loop())

    @classmethod
    async def connect_unix(cls, path: str) -> "Client":
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            raise TtrpcError(Code.UNAVAILABLE, f"cannot connect to {path}: {exc}") from exc
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(self, service: str, method: str, request: Message, response_type: type[M],
                   timeout: float | None = None, metadata: dict[str, str] | None = None) -> M:
        where = f"{service}/{method}"
        envelope = messages.Request(service=service, method=method,
                                    payload=request.SerializeToString())
        if timeout is not None:
            envelope.timeout_nano = max(1, int(timeout * 1e9))  # 0 would mean "no deadline"
        for key, value in (metadata or {}).items():
            envelope.metadata.add(key=key, value=value)
        data = envelope.SerializeToString()
        if len(data) > MAX_PAYLOAD:
            raise TtrpcError(Code.RESOURCE_EXHAUSTED,
                             f"{where}: request of {len(data)} bytes exceeds the "
                             f"{MAX_PAYLOAD} byte ttrpc limit")
        if self._closed_reason is not None:
            raise TtrpcError(Code.UNAVAILABLE, f"{where}: {self._closed_reason}")

        stream_id = self._allocate_stream_id()
        reply: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = reply
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self._frames.send(stream_id, FrameType.REQUEST, data)
                except ConnectionClosed as exc:
                    raise TtrpcError(Code.UNAVAILABLE, f"{where}: {exc}") from None
                response = await reply
        except TimeoutError:
            raise TtrpcError(Code.DEADLINE_EXCEEDED,
                             f"{where}: no response within {timeout}s") from None
        finally:
            self._pending.pop(stream_id, None)
            if reply.done() and not reply.cancelled():
                reply.exception()  # mark a connection-loss error as seen if we raised another
        return _unwrap(where, response, response_type)

    async def close(self) -> None:
        self._shut_down("client closed")
        self._receiver.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)
        await self._frames.close()

    def _allocate_stream_id(self) -> int:
        # Odd ids only; after wrapping, skip any id still waiting for its answer.
        while True:
            stream_id = self._next_stream_id
            self._next_stream_id += 2
            if self._next_stream_id > _MAX_STREAM_ID:
                self._next_stream_id = 1
            if stream_id not in self._pending:
                return stream_id

    async def _receive_loop(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader)
                reply = self._pending.get(frame.header.stream_id)
                if frame.header.type != FrameType.RESPONSE or reply is None or reply.done():
                    log.debug("ttrpc client: dropping frame type %d on stream %d",
                              frame.header.type, frame.header.stream_id)
                elif frame.payload is None:
                    reply.set_exception(TtrpcError(
                        Code.RESOURCE_EXHAUSTED, f"response exceeds the {MAX_PAYLOAD} byte limit"))
                else:
                    reply.set_result(frame.payload)
        except ConnectionClosed as exc:
            self._shut_down(f"connection lost: {exc}")

    def _shut_down(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(TtrpcError(Code.UNAVAILABLE, self._closed_reason))


def _unwrap(where: str, data: bytes, response_type: type[M]) -> M:
    try:
        response = messages.Response.FromString(data)
    except DecodeError as exc:
        raise TtrpcError(Code.INTERNAL, f"{where}: undecodable ttrpc response: {exc}") from None
    # containerd 1.6 omits the status on success, so absent means OK.
    if response.HasField("status") and response.status.code != Code.OK:
        raise TtrpcError(Code.from_wire(response.status.code), response.status.message)
    try:
        return response_type.FromString(response.payload)
    except DecodeError as exc:
        raise TtrpcError(Code.INTERNAL,
                         f"{where}: cannot decode {response_type.DESCRIPTOR.full_name}: {exc}") from None
