"""Client of Cloud Hypervisor's REST API (HTTP/1.1 over its unix socket).

One connection per request keeps the client trivial and lets a request carry
file descriptors (SCM_RIGHTS on the bytes of the request, as CLH expects for
vm.add-net with tap fds). Requests run in a worker thread on a blocking
socket with a timeout, so an unresponsive VMM cannot hang the event loop.
"""
from __future__ import annotations

import array
import asyncio
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import HypervisorError

API_PREFIX = "/api/v1/"
MAX_RESPONSE = 16 * 1024 * 1024


class ClhApiError(HypervisorError):
    """CLH answered with an error status."""

    def __init__(self, endpoint: str, status: int, body: str) -> None:
        super().__init__(f"CLH {endpoint}: HTTP {status}: {body.strip() or '(no body)'}")
        self.endpoint = endpoint
        self.status = status
        self.body = body


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ClhApi:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def get(self, endpoint: str) -> Any:
        return await self._call("GET", endpoint, None, ())

    async def put(self, endpoint: str, body: dict[str, Any] | None = None,
                  fds: Sequence[int] = ()) -> Any:
        return await self._call("PUT", endpoint, body, fds)

    async def _call(self, method: str, endpoint: str, body: dict[str, Any] | None,
                    fds: Sequence[int]) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        response = await asyncio.to_thread(self.roundtrip, method, endpoint, payload, fds)
        if not 200 <= response.status < 300:
            raise ClhApiError(endpoint, response.status, response.body.decode(errors="replace"))
        try:
            return response.json()
        except ValueError as exc:
            raise HypervisorError(f"CLH {endpoint}: invalid JSON in response") from exc

    def roundtrip(self, method: str, endpoint: str, payload: bytes | None,
                  fds: Sequence[int] = ()) -> HttpResponse:
        """Blocking: one request, one response, on a fresh connection."""
        request = encode_request(method, endpoint, payload)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sent = sock.sendmsg([request], ancillary)
                sock.sendall(request[sent:])
            else:
                sock.sendall(request)
            return read_response(sock)


def encode_request(method: str, endpoint: str, payload: bytes | None) -> bytes:
    if not endpoint or "/" in endpoint or any(c.isspace() for c in endpoint):
        raise ValueError(f"bad CLH endpoint {endpoint!r}")
    lines = [f"{method} {API_PREFIX}{endpoint} HTTP/1.1", "Host: localhost",
             "Accept: application/json"]
    if payload is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (payload or b"")


def read_response(sock: socket.socket) -> HttpResponse:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("CLH closed the connection before answering")
        buf += chunk
        if len(buf) > MAX_RESPONSE:
            raise ConnectionError("CLH response header too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"bad HTTP status line from CLH: {status_line!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > MAX_RESPONSE:
        raise ConnectionError(f"CLH response too large ({length} bytes)")
    body = rest
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            raise ConnectionError("CLH closed the connection mid-response")
        body += chunk
    return HttpResponse(int(parts[1]), body[:length])
