"""The echo service and its server, shared by the ttrpc server tests."""

import asyncio

from google.protobuf import empty_pb2, wrappers_pb2
from google.protobuf.duration_pb2 import Duration

from shim.ttrpc import Client, Code, Server, TtrpcError

SERVICE = "graft.test.Echo"
StringValue = wrappers_pb2.StringValue


class EchoService:
    """Handlers for the tests; `Block` waits until released and records cancellation."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def echo(self, request: StringValue) -> StringValue:
        return StringValue(value=request.value)

    async def block(self, request: StringValue) -> StringValue:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return StringValue(value="released " + request.value)

    async def sleep(self, request: Duration) -> empty_pb2.Empty:
        await asyncio.sleep(request.ToTimedelta().total_seconds())
        return empty_pb2.Empty()

    async def not_found(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        raise TtrpcError(Code.NOT_FOUND, "no such thing")

    async def crash(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        raise RuntimeError("boom")

    async def wrong_return(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        return "not a message"  # type: ignore[return-value]

    async def own_timeout(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        return empty_pb2.Empty()


def make_server() -> tuple[Server, EchoService]:
    service = EchoService()
    server = Server()
    server.register(SERVICE, {
        "Echo": (StringValue, service.echo),
        "Block": (StringValue, service.block),
        "Sleep": (Duration, service.sleep),
        "NotFound": (empty_pb2.Empty, service.not_found),
        "Crash": (empty_pb2.Empty, service.crash),
        "WrongReturn": (empty_pb2.Empty, service.wrong_return),
        "OwnTimeout": (empty_pb2.Empty, service.own_timeout),
    })
    return server, service


async def echo(client: Client, text: str, **kwargs) -> str:
    return (await client.call(SERVICE, "Echo", StringValue(value=text), StringValue, **kwargs)).value
