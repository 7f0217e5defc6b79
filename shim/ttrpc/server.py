"""ttrpc server: unary requests served concurrently, answered in completion order."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import NamedTuple

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from . import messages
from .framing import MAX_PAYLOAD, FrameType
from .status import Code, TtrpcError
from .transport import ConnectionClosed, FrameWriter, read_frame

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[Message]]


class _Method(NamedTuple):
    request_type: type[Message]
    handler: Handler


# Per connection. A client that sends without reading its answers must not grow our memory:
# past MAX_UNSENT answers waiting for the socket we stop reading its requests (the kernel's
# buffers then push back on it); past MAX_IN_FLIGHT requests at once (long polls included)
# new ones are answered RESOURCE_EXHAUSTED.
MAX_IN_FLIGHT = 1024
MAX_UNSENT = 32


class Server:
    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, max_unsent: int = MAX_UNSENT) -> None:
        self._limits = (max_in_flight, max_unsent)
        self._methods: dict[tuple[str, str], _Method] = {}
        self._listeners: list[asyncio.base_events.Server] = []
        self._connections: set[asyncio.Task] = set()

    # -- registration -------------------------------------------------------------------------

    def register(self, service: str, methods: dict[str, tuple[type[Message], Handler]]) -> None:
        for name, (request_type, handler) in methods.items():
            self._methods[(service, name)] = _Method(request_type, handler)

    def register_service(self, descriptor: ServiceDescriptor, impl: object) -> None:
        """Bind every unary method of `descriptor` to the coroutine `impl.<MethodName>`.

        Methods `impl` lacks stay unregistered and therefore answer UNIMPLEMENTED; so do
        streaming methods, which this server does not support.
        """
        from google.protobuf import message_factory  # only needed here; keeps import cheap

        for method in descriptor.methods:
            handler = getattr(impl, method.name, None)
            if not callable(handler) or method.client_streaming or method.server_streaming:
                continue
            request_type = message_factory.GetMessageClass(method.input_type)
            self._methods[(descriptor.full_name, method.name)] = _Method(request_type, handler)

    # -- serving --------------------------------------------------------------------------------

    async def serve_unix(self, path: str | None = None,
                         sock: socket.socket | None = None) -> asyncio.base_events.Server:
        """Listen on a unix socket path or an already bound/listening socket."""
        if (path is None) == (sock is None):
            raise ValueError("serve_unix needs exactly one of path or sock")
        if sock is not None:
            listener = await asyncio.start_unix_server(self._accept, sock=sock)
        else:
            listener = await asyncio.start_unix_server(self._accept, path=path)
        self._listeners.append(listener)
        return listener

    async def serve_listener(self, sock: socket.socket) -> asyncio.base_events.Server:
        """Serve on any bound, listening stream socket (e.g. AF_VSOCK)."""
        listener = await asyncio.start_server(self._accept, sock=sock)
        self._listeners.append(listener)
        return listener

    async def close(self) -> None:
        """Stop listening and end every connection this server accepted."""
        for listener in self._listeners:
            listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.serve_connection(reader, writer)
        except asyncio.CancelledError:
            # Only close() cancels us. Python 3.11's stream callback would log a cancelled
            # connection task as an error, so end it normally instead.
            pass
        finally:
            self._connections.discard(task)

    async def serve_connection(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the peer closes; in-flight handlers are cancelled then."""
        await _Connection(self._methods, reader, writer, *self._limits).run()


class _Connection:
    def __init__(self, methods: dict[tuple[str, str], _Method],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_in_flight: int, max_unsent: int) -> None:
        self._methods = methods
        self._reader = reader
        self._frames = FrameWriter(writer)
        self._handlers: set[asyncio.Task] = set()
        self._active_streams: set[int] = set()
        self._max_in_flight = max_in_flight
        self._max_unsent = max_unsent
        self._unsent = 0
        self._sent = asyncio.Event()  # set whenever an answer left (or failed to)

    async def run(self) -> None:
        try:
            while True:
                while self._unsent >= self._max_unsent:  # the peer does not read: neither do we
                    self._sent.clear()
                    await self._sent.wait()
                try:
                    frame = await read_frame(self._reader)
                except ConnectionClosed as exc:
                    log.debug("ttrpc connection ended: %s", exc)
                    return
                self._dispatch(frame.header.stream_id, frame.header.type, frame.payload)
                await asyncio.sleep(0)  # let it start, so its answer counts before the next read
        finally:
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._frames.close()

    def _dispatch(self, stream_id: int, frame_type: int, payload: bytes | None) -> None:
        if payload is None:
            self._reject(stream_id, Code.RESOURCE_EXHAUSTED,
                         f"message exceeds the {MAX_PAYLOAD} byte ttrpc limit")
        elif frame_type != FrameType.REQUEST:
            self._reject(stream_id, Code.INVALID_ARGUMENT,
                         f"unsupported frame type {frame_type} (only unary requests are served)")
        elif stream_id % 2 == 0:
            self._reject(stream_id, Code.INVALID_ARGUMENT,
                         f"stream id {stream_id} is even: client stream ids must be odd")
        elif stream_id in self._active_streams:
            self._reject(stream_id, Code.INVALID_ARGUMENT, f"stream id {stream_id} is already in use")
        elif len(self._active_streams) >= self._max_in_flight:
            self._reject(stream_id, Code.RESOURCE_EXHAUSTED,
                         f"more than {self._max_in_flight} requests in flight on this connection")
        else:
            self._active_streams.add(stream_id)
            self._spawn(self._handle_request(stream_id, payload))

    def _reject(self, stream_id: int, code: Code, message: str) -> None:
        log.warning("ttrpc: rejecting stream %d: %s", stream_id, message)
        self._spawn(self._send_response(stream_id, _error_response(code, message)))

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle_request(self, stream_id: int, payload: bytes) -> None:
        try:
            response = await self._call(payload)
        finally:
            self._active_streams.discard(stream_id)
        await self._send_response(stream_id, response)

    async def _call(self, payload: bytes) -> Message:
        try:
            request = messages.Request.FromString(payload)
        except DecodeError as exc:
            return _error_response(Code.INVALID_ARGUMENT, f"undecodable ttrpc request: {exc}")
        method = self._methods.get((request.service, request.method))
        if method is None:
            return _error_response(Code.UNIMPLEMENTED,
                                   f"{request.service}/{request.method} is not implemented")
        try:
            argument = method.request_type.FromString(request.payload)
        except DecodeError as exc:
            return _error_response(Code.INVALID_ARGUMENT,
                                   f"cannot decode {method.request_type.DESCRIPTOR.full_name}: {exc}")

        where = f"{request.service}/{request.method}"
        deadline = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        try:
            async with asyncio.timeout(deadline) as timer:
                result = await method.handler(argument)
            if not isinstance(result, Message):
                raise TypeError(f"handler returned {type(result).__name__}, not a protobuf message")
            body = result.SerializeToString()
        except TtrpcError as exc:
            return _error_response(exc.code, exc.message)
        except TimeoutError:
            if not timer.expired():
                log.exception("ttrpc handler %s failed", where)
                return _error_response(Code.UNKNOWN, f"{where}: TimeoutError")
            return _error_response(Code.DEADLINE_EXCEEDED,
                                   f"{where} exceeded its {deadline:.3f}s deadline")
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the connection is closing: nobody is left to answer
            return _error_response(Code.CANCELLED, f"{where} was cancelled")
        except Exception as exc:
            log.exception("ttrpc handler %s failed", where)
            return _error_response(Code.UNKNOWN, f"{where}: {type(exc).__name__}: {exc}")
        response = messages.Response(payload=body)
        response.status.SetInParent()  # OK: present but empty on the wire, as Go's server sends it
        return response

    async def _send_response(self, stream_id: int, response: Message) -> None:
        data = response.SerializeToString()
        if len(data) > MAX_PAYLOAD:
            data = _error_response(Code.RESOURCE_EXHAUSTED,
                                   f"response of {len(data)} bytes exceeds the ttrpc limit"
                                   ).SerializeToString()
        self._unsent += 1
        try:
            await self._frames.send(stream_id, FrameType.RESPONSE, data)
        except ConnectionClosed:
            log.debug("ttrpc: peer gone before the response on stream %d", stream_id)
        finally:
            self._unsent -= 1
            self._sent.set()


def _error_response(code: Code, message: str) -> Message:
    response = messages.Response()
    response.status.code = code
    response.status.message = message
    return response
