"""Events publisher against a real ttrpc server standing in for containerd's Events service."""
from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf import empty_pb2

from shim import events as topics
from shim.api.containerd import EVENTS_SERVICE_NAME, events_pb2, events_service_pb2
from shim.events import Publisher, pack_bare
from shim.ttrpc import Code, Server, TtrpcError


async def test_forward_in_order_with_bare_type_urls_and_retry(tmp_path: Path):
    received: list = []
    failures = {"left": 2}

    async def forward(req):
        if failures["left"]:
            failures["left"] -= 1
            raise TtrpcError(Code.UNAVAILABLE, "not yet")
        if not req.envelope.HasField("timestamp"):
            raise TtrpcError(Code.INVALID_ARGUMENT, "missing timestamp")  # as containerd does
        received.append(req.envelope)
        return empty_pb2.Empty()

    server = Server()
    server.register(EVENTS_SERVICE_NAME, {"Forward": (events_service_pb2.ForwardRequest, forward)})
    path = tmp_path / "containerd.sock.ttrpc"
    await server.serve_unix(str(path))
    publisher = Publisher("k8s.io", f"unix://{path}")
    runner = asyncio.ensure_future(publisher.run())
    publisher.publish(topics.TASK_START, events_pb2.TaskStart(container_id="c", pid=1))
    publisher.publish(topics.TASK_EXIT, events_pb2.TaskExit(container_id="c", id="c", exit_status=3))
    await publisher.close()
    await asyncio.wait_for(runner, 10)
    await server.close()

    assert [e.topic for e in received] == [topics.TASK_START, topics.TASK_EXIT]
    assert all(e.namespace == "k8s.io" for e in received)
    assert received[1].event.type_url == "containerd.events.TaskExit"
    assert events_pb2.TaskExit.FromString(received[1].event.value).exit_status == 3


async def test_fallback_to_publish_binary(tmp_path: Path, monkeypatch):
    script = tmp_path / "fake-containerd"
    log = tmp_path / "calls"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat >> {log}.stdin\n")
    script.chmod(0o755)
    monkeypatch.setattr(Publisher, "RETRY_DELAYS", ())
    publisher = Publisher("ns1", str(tmp_path / "nobody-listens"), str(script), "/run/c.sock")
    runner = asyncio.ensure_future(publisher.run())
    event = events_pb2.TaskDelete(container_id="c")
    publisher.publish(topics.TASK_DELETE, event)
    await publisher.close()
    await asyncio.wait_for(runner, 20)
    assert log.read_text().split() == ["--address", "/run/c.sock", "publish", "--topic",
                                       "/tasks/delete", "--namespace", "ns1"]
    assert (tmp_path / "calls.stdin").read_bytes() == pack_bare(event).SerializeToString()


def test_retries_last_as_long_as_runc_shims():
    """containerd's runc shim requeues a failed event after 1, 2, 3, 4 and 5 s: an event must
    outlive a containerd restart of that length here too."""
    assert sum(Publisher.RETRY_DELAYS) >= 15


async def test_an_event_outlives_containerd_being_down(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Publisher, "RETRY_DELAYS", (0.05, 0.1, 0.2, 0.4, 0.8, 1.6))
    received: list = []

    async def forward(req):
        received.append(req.envelope.topic)
        return empty_pb2.Empty()

    path = tmp_path / "containerd.sock.ttrpc"
    publisher = Publisher("k8s.io", f"unix://{path}")
    runner = asyncio.ensure_future(publisher.run())
    publisher.publish(topics.TASK_EXIT, events_pb2.TaskExit(container_id="c", id="c"))
    await asyncio.sleep(1.0)  # nobody listens yet: several tries fail
    assert received == []
    server = Server()
    server.register(EVENTS_SERVICE_NAME, {"Forward": (events_service_pb2.ForwardRequest, forward)})
    await server.serve_unix(str(path))
    await publisher.close()
    await asyncio.wait_for(runner, 10)
    await server.close()
    assert received == [topics.TASK_EXIT]
