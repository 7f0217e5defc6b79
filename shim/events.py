"""Task events to containerd: one FIFO queue, published by ttrpc Forward with retries.

Events leave in the order they were queued (create → start → exit → delete); a failed event
is retried for about as long as containerd's runc shim retries (its requeues wait 1, 2, … 5 s:
an event outlives a containerd restart of ~15 s), each try bounded by 5 s, then handed to
`<publish-binary> publish` as a last resort.
Tests capture events with :class:`RecordingSink` instead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from shim.ttrpc import Client, TtrpcError

log = logging.getLogger(__name__)

TASK_CREATE = "/tasks/create"
TASK_START = "/tasks/start"
TASK_EXIT = "/tasks/exit"
TASK_DELETE = "/tasks/delete"
TASK_EXEC_ADDED = "/tasks/exec-added"
TASK_EXEC_STARTED = "/tasks/exec-started"
TASK_OOM = "/tasks/oom"
TASK_PAUSED = "/tasks/paused"
TASK_RESUMED = "/tasks/resumed"
TASK_CHECKPOINTED = "/tasks/checkpointed"


class EventSink(Protocol):
    def publish(self, topic: str, event: Message) -> None:
        """Queue *event*; never blocks, never raises for delivery problems."""


def pack_bare(event: Message) -> any_pb2.Any:
    # containerd 1.6 subscribers decode only the bare type name (no type.googleapis.com/ prefix).
    return any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


@dataclass(frozen=True)
class QueuedEvent:
    topic: str
    event: Message
    timestamp_ns: int


class RecordingSink:
    """An EventSink that keeps events in a list (for tests)."""

    def __init__(self) -> None:
        self.events: list[QueuedEvent] = []

    def publish(self, topic: str, event: Message) -> None:
        self.events.append(QueuedEvent(topic, event, time.time_ns()))

    def topics(self) -> list[str]:
        return [e.topic for e in self.events]


class Publisher:
    """Forwards events to containerd's ttrpc Events service. Run :meth:`run` as an owned task."""

    # Pauses between tries: quick once (a blip), then as runc's shim requeues.
    RETRY_DELAYS = (0.1, 1.0, 2.0, 3.0, 4.0, 5.0)
    TIMEOUT = 5.0

    def __init__(self, namespace: str, ttrpc_address: str, publish_binary: str = "",
                 containerd_address: str = "") -> None:
        self._namespace = namespace
        self._ttrpc_address = ttrpc_address.removeprefix("unix://")
        self._publish_binary = publish_binary
        self._containerd_address = containerd_address
        self._queue: asyncio.Queue[QueuedEvent | None] = asyncio.Queue()
        self._client: Client | None = None

    def publish(self, topic: str, event: Message) -> None:
        self._queue.put_nowait(QueuedEvent(topic, event, time.time_ns()))

    async def run(self) -> None:
        try:
            while (item := await self._queue.get()) is not None:
                try:
                    await self._deliver(item)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug with one event must not silence all later ones
                    log.exception("event %s dropped", item.topic)
        finally:
            if self._client is not None:
                await self._client.close()

    async def close(self) -> None:
        """Ask :meth:`run` to stop after the events already queued (bounded wait by caller)."""
        self._queue.put_nowait(None)

    def _envelope(self, item: QueuedEvent):
        from shim.api.containerd import events_service_pb2 as pb

        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(item.timestamp_ns)
        return pb.ForwardRequest(envelope=pb.Envelope(
            timestamp=stamp, namespace=self._namespace, topic=item.topic,
            event=pack_bare(item.event)))

    async def _deliver(self, item: QueuedEvent) -> None:
        from google.protobuf import empty_pb2
        from shim.api.containerd import EVENTS_SERVICE_NAME

        request = self._envelope(item)
        last_error: Exception | None = None
        for attempt in range(len(self.RETRY_DELAYS) + 1):
            try:
                if self._client is None or self._client.closed:
                    self._client = await asyncio.wait_for(
                        Client.connect_unix(self._ttrpc_address), self.TIMEOUT)
                await self._client.call(EVENTS_SERVICE_NAME, "Forward", request,
                                        empty_pb2.Empty, timeout=self.TIMEOUT)
                return
            except (TtrpcError, OSError, TimeoutError) as exc:
                last_error = exc
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                if attempt < len(self.RETRY_DELAYS):
                    await asyncio.sleep(self.RETRY_DELAYS[attempt])
        log.warning("event %s: ttrpc forward failed (%s); trying %s publish",
                    item.topic, last_error, self._publish_binary or "<no publish binary>")
        await self._publish_by_exec(item, request.envelope.event.SerializeToString())

    async def _publish_by_exec(self, item: QueuedEvent, any_bytes: bytes) -> None:
        if not self._publish_binary:
            log.error("event %s dropped: no way to reach containerd", item.topic)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                self._publish_binary, "--address", self._containerd_address, "publish",
                "--topic", item.topic, "--namespace", self._namespace,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.error("event %s dropped: cannot run %s: %s", item.topic, self._publish_binary, exc)
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(any_bytes), self.TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("event %s dropped: %s publish timed out", item.topic, self._publish_binary)
            return
        if proc.returncode != 0:
            log.error("event %s dropped: publish exited %s: %s", item.topic, proc.returncode,
                      err.decode(errors="replace").strip())
