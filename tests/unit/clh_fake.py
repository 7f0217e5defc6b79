"""A CONTRACT FAKE of Cloud Hypervisor's REST API — not real CLH, runs no VM.

It stands in for the `cloud-hypervisor` binary in unit tests of
shim/hypervisor/clh.py (no CLH binary is installable here). Run as
``python3 clh_fake.py --api-socket path=<socket>``. It checks what graft sends
against CLH's OpenAPI spec (vmm/src/api/openapi/cloud-hypervisor.yaml):
known endpoints and methods, request bodies (required fields, types, enums;
unknown fields are rejected, stricter than CLH), and CLH's VM state machine
(create → boot → pause → snapshot; restore only into a fresh VMM, leaving the
VM paused; resume only when paused). Plus CLH rules graft depends on: memory
zones need memory.size 0 and an existing, pre-sized file; virtio-fs needs
shared memory; tap fds arrive by SCM_RIGHTS with num_queues = 2 × fds.

vm.snapshot writes config.json (the VM config, memory echoed as created),
state.json and memory-ranges (empty when all RAM is in shared file zones);
vm.restore reads them back. After boot it serves hybrid vsock on the vsock
socket: ``CONNECT <port>\\n`` → ``OK <n>\\n``, then echoes bytes while running.

Fault injection for error-path tests: environment CLH_FAKE_EXIT_ON=<endpoint>
makes the process exit(3) (printing to stderr) when that endpoint is called.
"""
from __future__ import annotations

import array
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clh_fake_schema import ENDPOINTS, ApiError, validate  # beside this script


def check_vm_config(cfg: dict[str, Any]) -> None:
    """CLH semantic rules beyond the schema."""
    validate(cfg, "VmConfig", "VmConfig")
    payload = cfg["payload"]
    if "kernel" not in payload and "firmware" not in payload:
        raise ApiError(400, "payload: kernel or firmware required")
    for key in ("kernel", "initramfs"):
        if key in payload and not Path(payload[key]).is_file():
            raise ApiError(400, f"payload.{key}: {payload[key]} does not exist")
    cpus = cfg.get("cpus", {"boot_vcpus": 1, "max_vcpus": 1})
    if not 1 <= cpus["boot_vcpus"] <= cpus["max_vcpus"]:
        raise ApiError(400, "cpus: need 1 <= boot_vcpus <= max_vcpus")
    memory = cfg.get("memory", {"size": 512 << 20})
    zones = memory.get("zones") or []
    if zones and memory["size"] != 0:
        raise ApiError(400, "memory: size must be 0 when memory zones define the RAM")
    if not zones and memory["size"] <= 0:
        raise ApiError(400, "memory: size must be > 0")
    for zone in zones:
        if zone["size"] <= 0 or zone["size"] % 4096:
            raise ApiError(400, f"memory zone {zone['id']}: size must be a positive page multiple")
        if "file" in zone:
            path = Path(zone["file"])
            if not path.is_file() or path.stat().st_size < zone["size"]:
                raise ApiError(400, f"memory zone {zone['id']}: file {path} missing or smaller than zone")
    all_shared = memory.get("shared", False) if not zones else all(z.get("shared", False) for z in zones)
    if cfg.get("fs") and not all_shared:
        raise ApiError(400, "virtio-fs (vhost-user) requires shared memory")
    vsock = cfg.get("vsock")
    if vsock is not None and vsock["cid"] < 3:
        raise ApiError(400, "vsock.cid must be >= 3")
    for key in ("serial", "console"):
        console = cfg.get(key)
        if console and console["mode"] == "File" and "file" not in console:
            raise ApiError(400, f"{key}: mode File needs a file")


def file_url_dir(url: str, field: str) -> Path:
    if not url.startswith("file://"):
        raise ApiError(400, f"{field}: only file:// URLs are supported")
    path = Path(url[len("file://"):])
    if not path.is_absolute() or not path.is_dir():
        raise ApiError(400, f"{field}: {path} is not an existing directory")
    return path


# ---------------------------------------------------------------- the VMM
class FakeVmm:
    def __init__(self, api_socket: Path) -> None:
        self.api_socket = api_socket
        self.state: str | None = None  # None = no VM; else a VmState
        self.config: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.vsock: socket.socket | None = None
        self.exit_on = os.environ.get("CLH_FAKE_EXIT_ON", "")

    # -- dispatch --------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes, fds: list[int]) -> tuple[int, Any]:
        if not path.startswith("/api/v1/"):
            raise ApiError(404, f"unknown path {path}")
        endpoint = path[len("/api/v1/"):]
        if endpoint not in ENDPOINTS:
            raise ApiError(404, f"unknown endpoint {endpoint}")
        want_method, schema = ENDPOINTS[endpoint]
        if method != want_method:
            raise ApiError(405, f"{endpoint} takes {want_method}, got {method}")
        if endpoint == self.exit_on:
            print(f"clh-fake: injected crash on {endpoint}", file=sys.stderr, flush=True)
            os._exit(3)
        data = None
        if schema is not None:
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, f"{endpoint}: body is not JSON") from None
            validate(data, schema, schema)
        elif body.strip():
            raise ApiError(400, f"{endpoint} takes no body")
        if fds and endpoint != "vm.add-net":
            raise ApiError(400, f"{endpoint} does not take file descriptors")
        handler = getattr(self, "do_" + endpoint.replace(".", "_").replace("-", "_"))
        with self.lock:
            return handler(data, fds) if schema or fds else handler()

    def need_state(self, *states: str) -> None:
        if self.state is None:
            raise ApiError(404, "VM is not created")
        if self.state not in states:
            raise ApiError(405, f"VM is {self.state}, needs {' or '.join(states)}")

    # -- endpoints -------------------------------------------------------
    def do_vmm_ping(self) -> tuple[int, Any]:
        return 200, {"build_version": "contract-fake", "version": "v0.0.0-fake", "pid": os.getpid(),
                     "features": []}

    def do_vmm_shutdown(self) -> tuple[int, Any]:
        return 204, "exit"

    def do_vm_info(self) -> tuple[int, Any]:
        if self.state is None:
            raise ApiError(404, "VM is not created")
        return 200, {"config": self.config, "state": self.state}

    def do_vm_create(self, cfg: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
        if self.state is not None:
            raise ApiError(400, "VM already created")
        check_vm_config(cfg)
        self.config, self.state = cfg, "Created"
        return 204, None

    def do_vm_boot(self) -> tuple[int, Any]:
        self.need_state("Created")
        self.state = "Running"
        self.console("fake guest booted")
        self.start_vsock()
        return 204, None

    def do_vm_pause(self) -> tuple[int, Any]:
        self.need_state("Running")
        self.state = "Paused"
        return 204, None

    def do_vm_resume(self) -> tuple[int, Any]:
        self.need_state("Paused")
        self.state = "Running"
        return 204, None

    def do_vm_shutdown(self) -> tuple[int, Any]:
        self.need_state("Running", "Paused")
        self.state = "Shutdown"
        return 204, None

    def do_vm_delete(self) -> tuple[int, Any]:
        self.state, self.config = None, None
        return 204, None

    def do_vm_snapshot(self, req: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
        self.need_state("Paused")
        directory = file_url_dir(req["destination_url"], "destination_url")
        assert self.config is not None
        memory = self.config.get("memory", {})
        zones = memory.get("zones") or []
        # RAM outside shared file-backed zones would be copied into memory-ranges
        copied = 0 if zones and all(z.get("shared") and z.get("file") for z in zones) \
            else memory.get("size", 0) + sum(z["size"] for z in zones if not z.get("shared"))
        (directory / "config.json").write_text(json.dumps(self.config, indent=2))
        (directory / "state.json").write_text(json.dumps(
            {"fake": True, "vm_state": self.state, "copied_ram_bytes": copied}))
        (directory / "memory-ranges").write_bytes(b"fake-ram" if copied else b"")
        return 204, None

    def do_vm_restore(self, req: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
        if self.state is not None:
            raise ApiError(404, "a VM already exists: restore needs a fresh VMM")
        directory = file_url_dir(req["source_url"], "source_url")
        for name in ("config.json", "state.json", "memory-ranges"):
            if not (directory / name).exists():
                raise ApiError(400, f"snapshot is missing {name}")
        try:
            cfg = json.loads((directory / "config.json").read_text())
            state = json.loads((directory / "state.json").read_text())
        except ValueError:
            raise ApiError(400, "snapshot config.json/state.json is not JSON") from None
        check_vm_config(cfg)
        if state.get("copied_ram_bytes") and not (directory / "memory-ranges").read_bytes():
            raise ApiError(400, "memory-ranges is empty but RAM was copied")
        self.config = cfg
        self.state = "Running" if req.get("resume") else "Paused"
        self.console("fake guest restored")
        self.start_vsock()
        return 204, None

    def do_vm_add_net(self, net: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
        self.need_state("Created", "Running", "Paused")
        if fds:
            for fd in fds:
                os.fstat(fd)  # a real descriptor arrived
            if net.get("num_queues", 2) != 2 * len(fds):
                raise ApiError(400, f"num_queues must be 2 x {len(fds)} tap fds")
        elif "tap" not in net and not net.get("vhost_user"):
            raise ApiError(400, "add-net: tap name, tap fds or vhost-user needed")
        assert self.config is not None
        nets = self.config.setdefault("net", [])
        net_id = net.get("id") or f"_net{len(nets)}"
        if any(n.get("id") == net_id for n in nets):
            raise ApiError(409, f"device id {net_id} already exists")
        nets.append(dict(net, id=net_id))
        # test-visible trace of what arrived (CLH keeps the fds internally)
        self.console(f"fake: add-net {net_id} tap={net.get('tap', '-')} fds={len(fds)}")
        if self.state == "Created":
            return 204, None
        return 200, {"id": net_id, "bdf": f"0000:00:{5 + len(nets):02x}.0"}

    def do_vm_resize(self, req: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
        self.need_state("Running", "Paused", "Created")
        assert self.config is not None
        cpus = self.config.setdefault("cpus", {"boot_vcpus": 1, "max_vcpus": 1})
        if "desired_vcpus" in req:
            if not 1 <= req["desired_vcpus"] <= cpus["max_vcpus"]:
                raise ApiError(400, f"desired_vcpus must be within 1..{cpus['max_vcpus']}")
            cpus["boot_vcpus"] = req["desired_vcpus"]
        return 204, None

    # -- side effects ----------------------------------------------------
    def console(self, line: str) -> None:
        assert self.config is not None
        serial = self.config.get("serial") or {}
        if serial.get("mode") == "File":
            with open(serial["file"], "a") as f:
                f.write(line + "\n")

    def start_vsock(self) -> None:
        assert self.config is not None
        vsock = self.config.get("vsock")
        if vsock is None or self.vsock is not None:
            return
        path = vsock["socket"]
        if os.path.exists(path):
            os.unlink(path)
        self.vsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.vsock.bind(path)
        self.vsock.listen(8)
        threading.Thread(target=self.vsock_accept_loop, daemon=True).start()

    def vsock_accept_loop(self) -> None:
        assert self.vsock is not None
        while True:
            conn, _ = self.vsock.accept()
            threading.Thread(target=self.vsock_connection, args=(conn,), daemon=True).start()

    def vsock_connection(self, conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                line += chunk
            words = line.decode(errors="replace").split()
            if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit():
                return  # CLH drops malformed requests
            while self.state == "Paused":  # a paused guest does not accept yet
                time.sleep(0.01)
            if self.state != "Running":
                return
            conn.sendall(b"OK 1073741824\n")
            while data := conn.recv(4096):  # the "guest service" echoes
                while self.state == "Paused":
                    time.sleep(0.01)
                conn.sendall(data)


# ---------------------------------------------------------------- HTTP
def read_request(conn: socket.socket) -> tuple[str, str, bytes, list[int]] | None:
    buf, fds = b"", []
    while b"\r\n\r\n" not in buf:
        fd_arr = array.array("i")
        data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * fd_arr.itemsize))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fd_arr.frombytes(payload[:len(payload) - len(payload) % fd_arr.itemsize])
        fds += list(fd_arr)
        if not data:
            if buf:
                raise ApiError(400, "connection closed mid-request")
            return None
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, version = request_line.split(" ")
    if version != "HTTP/1.1":
        raise ApiError(400, f"bad HTTP version {version}")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ApiError(400, f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length and headers.get("content-type") != "application/json":
        raise ApiError(400, "a body must be application/json")
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ApiError(400, "connection closed mid-body")
        body += chunk
    return method, path, body[:length], fds


REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}


def send_response(conn: socket.socket, status: int, payload: Any) -> None:
    body = b"" if payload is None or status == 204 else json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'X')}\r\nServer: clh-contract-fake\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    conn.sendall(head.encode() + body)


def serve(vmm: FakeVmm) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(vmm.api_socket))
    server.listen(16)
    while True:
        conn, _ = server.accept()
        with conn:
            while True:  # keep-alive: several requests per connection are fine
                fds: list[int] = []
                try:
                    request = read_request(conn)
                    if request is None:
                        break
                    method, path, body, fds = request
                    status, payload = vmm.handle(method, path, body, fds)
                except ApiError as exc:
                    status, payload = exc.status, {"error": str(exc)}
                finally:
                    for fd in fds:
                        os.close(fd)
                if payload == "exit":
                    send_response(conn, 204, None)
                    os.unlink(vmm.api_socket)
                    return
                send_response(conn, status, payload if status != 204 else None)


def main(argv: list[str]) -> int:
    api_socket = None
    args = iter(argv)
    for arg in args:
        if arg == "--api-socket":
            value = next(args, "")
            if value.startswith("path="):
                api_socket = Path(value[len("path="):])
            else:
                print(f"clh-fake: --api-socket wants path=<socket>, got {value!r}", file=sys.stderr)
                return 2
        else:
            print(f"clh-fake: unknown argument {arg!r}", file=sys.stderr)
            return 2
    if api_socket is None:
        print("clh-fake: --api-socket path=<socket> is required", file=sys.stderr)
        return 2
    serve(FakeVmm(api_socket))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
