"""Host side of Cloud Hypervisor's (and Firecracker's) hybrid vsock: connect
to the VMM's unix socket, ask for a guest port with ``CONNECT <port>\\n`` and
expect ``OK <host port>\\n``; afterwards the stream talks to the guest."""
from __future__ import annotations

import asyncio
from pathlib import Path

MAX_REPLY = 64


class HybridVsockError(ConnectionError):
    pass


async def connect_hybrid_vsock(socket_path: Path, port: int, timeout: float = 5.0
                               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if not 0 <= port < 2**32:
        raise ValueError(f"vsock port {port} out of range")
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        try:
            reply = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            raise HybridVsockError(f"{socket_path}: closed before answering CONNECT {port} "
                                   "(nothing listening on that guest port?)") from exc
        except asyncio.LimitOverrunError as exc:
            raise HybridVsockError(f"{socket_path}: oversized CONNECT reply") from exc
        except TimeoutError as exc:
            raise HybridVsockError(f"{socket_path}: no answer to CONNECT {port} in {timeout}s") from exc
        words = reply.decode(errors="replace").split()
        if len(reply) > MAX_REPLY or len(words) != 2 or words[0] != "OK" or not words[1].isdigit():
            raise HybridVsockError(f"{socket_path}: unexpected CONNECT reply {reply[:MAX_REPLY]!r}")
    except BaseException:
        writer.close()
        raise
    return reader, writer
