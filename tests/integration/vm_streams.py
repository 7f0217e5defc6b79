"""Reading a guest process's output to the end (shared by the VM integration tests)."""
from __future__ import annotations

from shim.agent.streams import copy_output
from shim.sandbox.sandbox import Sandbox


async def collect(box: Sandbox, cid: str, eid: str, stream: str) -> bytes:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)
    await copy_output(box.agent, cid, eid, stream, sink)  # type: ignore[arg-type]
    return bytes(out)
