#!/usr/bin/env python3
"""A private containerd 1.6 for tests: everything under one directory, torn down by `stop`.

    private_containerd.py start DIR   # config, CNI bridge network, images, runtime handlers
    private_containerd.py env DIR     # shell exports: CONTAINERD_ADDRESS, GRAFT_CTR, ...
    private_containerd.py restart DIR # stop and start containerd itself (shims keep running)
    private_containerd.py stop DIR    # kill containerd, remove what it created

Runtime handlers: `graft` (io.containerd.graft.v2, our shim via DIR/bin on containerd's PATH,
options ConfigPath = DIR/graft.toml) and `runc` (default, for comparison).
`start(..., sandboxer="shim")` (containerd 2.x only) writes a version 3 configuration whose
graft handler has `sandboxer = "shim"`: pods are then created through the shim's Sandbox API,
with no pause container. With `start(..., fresh=True)` (the node installer's tests) the
config is instead what `containerd config default` prints for the release in use, changed
only so that it runs privately, and no graft handler or shim is set up: DIR/bin stays empty
(but on containerd's PATH).
Images (built locally from busybox-static, no registry needed): graft.local/busybox:latest
and graft.local/pause:latest (the CRI sandbox image), imported into `default` and `k8s.io`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shim.cli.launcher import write_launcher  # noqa: E402
from shim.shim_manager.daemon_process import is_shim_process  # noqa: E402
BUSYBOX = Path("/bin/busybox")
# Each private containerd gets its own bridge and /24 out of this range, so that several of
# them (parallel test runs) never share a bridge or hand out the same pod IP.
SUBNET_PREFIX = "10.222"
BUSYBOX_IMAGE = "graft.local/busybox:latest"
PAUSE_IMAGE = "graft.local/pause:latest"
NAMESPACES = ("default", "k8s.io")
PATH_DIRS = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Layout:
    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.socket = self.base / "containerd.sock"
        self.config = self.base / "config.toml"
        self.graft_config = self.base / "graft.toml"
        self.bin = self.base / "bin"
        self.cni_conf = self.base / "cni" / "conf"
        self.cni_ipam = self.base / "cni" / "ipam"
        self.images = self.base / "images"
        self.log = self.base / "containerd.log"
        self.pid = self.base / "containerd.pid"
        self.ip_forward = self.base / "ip_forward.orig"
        self.network_file = self.base / "network.json"
        self.containerd_bin_file = self.base / "containerd-bin"
        self.sandboxer_file = self.base / "sandboxer"

    @property
    def containerd_bin(self) -> Path | None:
        """Directory of another containerd release (with its ctr) to run instead of PATH's."""
        try:
            return Path(self.containerd_bin_file.read_text().strip())
        except FileNotFoundError:
            return None

    @property
    def sandboxer(self) -> str:
        """The graft handler's sandbox controller ("" = containerd's default, podsandbox)."""
        try:
            return self.sandboxer_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def tool(self, name: str) -> str:
        """containerd or ctr: from containerd_bin if set, else from PATH."""
        return str(self.containerd_bin / name) if self.containerd_bin else name

    @property
    def network(self) -> "PodNetwork":
        return PodNetwork(**json.loads(self.network_file.read_text()))


@dataclasses.dataclass(frozen=True)
class PodNetwork:
    bridge: str
    subnet: str   # CIDR
    gateway: str  # the bridge's address (CNI isGateway)


def _choose_network(d: Layout) -> PodNetwork:
    """A bridge name and a /24 no other bridge route on this host uses yet."""
    digest = hashlib.sha256(str(d.base).encode()).hexdigest()
    routes = subprocess.run(["ip", "-4", "-o", "route"], capture_output=True, text=True).stdout
    used = {line.split()[0] for line in routes.splitlines() if line}
    first = int(digest[:4], 16)
    for i in range(254):
        third = (first + i) % 254 + 1
        subnet = f"{SUBNET_PREFIX}.{third}.0/24"
        if subnet not in used:
            return PodNetwork(bridge=f"gbr{digest[:8]}", subnet=subnet,
                              gateway=f"{SUBNET_PREFIX}.{third}.1")
    raise RuntimeError(f"no free /24 in {SUBNET_PREFIX}.0.0/16")


# -- configuration ---------------------------------------------------------------------------------

def _header(d: Layout, version: int) -> str:
    return f'''version = {version}
root = "{d.base}/root"
state = "{d.base}/state"

[grpc]
  address = "{d.socket}"
[ttrpc]
  address = "{d.socket}.ttrpc"
[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d.base}/opt"
'''


def _cri_runtime(d: Layout, table: str, sandboxer: str = "", sandbox_image: str = "") -> str:
    """The CRI runtime keys graft's tests need, under *table* (the CRI plugin's table in a
    version 2 configuration, the runtime plugin's in version 3)."""
    runtimes = f"{table}.containerd.runtimes"
    sandboxer_line = f'\n      sandboxer = "{sandboxer}"' if sandboxer else ""
    image_line = f'\n  sandbox_image = "{sandbox_image}"' if sandbox_image else ""
    # containerd 2.1 with a shim sandboxer fails StartContainer when the handler has options
    # of a type other than runc's ("can't unmarshal type runtimeoptions.v1.Options", fixed
    # upstream after 2.1): the shim then finds its config through $GRAFT_CONFIG (see launch).
    options = "" if sandboxer else f'''
      [{runtimes}.graft.options]
        ConfigPath = "{d.graft_config}"'''
    return f'''
[{table}]{image_line}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [{table}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d.cni_conf}"
    max_conf_num = 1
  [{table}.containerd]
    default_runtime_name = "runc"
    [{runtimes}.runc]
      runtime_type = "io.containerd.runc.v2"
    [{runtimes}.graft]
      runtime_type = "io.containerd.graft.v2"{sandboxer_line}
      pod_annotations = ["io.graft.*"]
      container_annotations = ["io.graft.*"]{options}
'''


def fresh_config(d: Layout) -> str:
    """`containerd config default` of this release (version 2 for 1.x, 3 for 2.x), with its
    paths, sockets and CNI dirs moved under DIR and the settings this machine needs."""
    import tomlkit  # dev dependency; only the installer tests need a fresh config

    done = subprocess.run([d.tool("containerd"), "config", "default"], capture_output=True,
                          text=True, timeout=60, check=True)
    doc = tomlkit.parse(done.stdout)
    doc["root"], doc["state"] = f"{d.base}/root", f"{d.base}/state"
    doc["grpc"]["address"] = str(d.socket)
    doc["ttrpc"]["address"] = f"{d.socket}.ttrpc"
    doc["debug"]["level"] = "debug"
    plugins = doc["plugins"]
    plugins["io.containerd.internal.v1.opt"]["path"] = f"{d.base}/opt"
    if "io.containerd.nri.v1.nri" in plugins:
        plugins["io.containerd.nri.v1.nri"]["socket_path"] = f"{d.base}/nri.sock"
    if doc["version"] == 2:
        cri = runtime = plugins["io.containerd.grpc.v1.cri"]
        cri["sandbox_image"] = PAUSE_IMAGE
        cri["cni"]["bin_dir"] = "/usr/lib/cni"
    else:
        runtime = plugins["io.containerd.cri.v1.runtime"]
        plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] = PAUSE_IMAGE
        runtime["cni"]["bin_dirs"] = ["/usr/lib/cni"]
    runtime["restrict_oom_score_adj"] = True  # root here lacks CAP_SYS_RESOURCE
    runtime["netns_mounts_under_state_dir"] = True
    runtime["cni"]["conf_dir"] = str(d.cni_conf)
    return tomlkit.dumps(doc)


def _containerd_config(d: Layout) -> str:
    if d.sandboxer:  # containerd 2.x names: the CRI plugin is split in images and runtime
        return (_header(d, 3) + _cri_runtime(d, "plugins.'io.containerd.cri.v1.runtime'",
                                             d.sandboxer)
                + f'''
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{PAUSE_IMAGE}"
''')
    return _header(d, 2) + _cri_runtime(d, 'plugins."io.containerd.grpc.v1.cri"',
                                        sandbox_image=PAUSE_IMAGE)


def _cni_config(d: Layout) -> str:
    net = d.network
    return json.dumps({
        "cniVersion": "0.4.0", "name": "graft-test",
        "plugins": [{
            "type": "bridge", "bridge": net.bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": net.subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(d.cni_ipam)},
        }],
    }, indent=2)




def _graft_config() -> str:
    guest = os.environ.get("GRAFT_GUEST_DIR", "")
    lines = ["[runtime]", 'log_level = "debug"']
    if guest:
        lines += ["", "[guest]", f'image_dir = "{guest}"']
    return "\n".join(lines) + "\n"


# -- images -------------------------------------------------------------------------------------

def _tar_add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o755,
             link: str | None = None, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0  # reproducible layer digest
    info.mode = mode
    if directory:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        info.mode = 0o777
        tar.addfile(info)
    else:
        info.size = len(data or b"")
        tar.addfile(info, io.BytesIO(data or b""))


def _busybox_layer() -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run", "var"):
            _tar_add(tar, directory, directory=True, mode=0o1777 if directory == "tmp" else 0o755)
        _tar_add(tar, "bin/busybox", data=BUSYBOX.read_bytes())
        for applet in sorted(set(applets) - {"busybox"}):
            _tar_add(tar, f"bin/{applet}", link="busybox")
        _tar_add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        _tar_add(tar, "etc/group", data=b"root:x:0:\n", mode=0o644)
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def build_image_tar(name: str, layer: bytes, cmd: list[str], out: Path) -> None:
    """An OCI image layout tar that `ctr images import` accepts."""
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": [f"PATH={PATH_DIRS}"], "Cmd": cmd, "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = _blob(blobs, json.dumps(config).encode(),
                        "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _blob(blobs, json.dumps(manifest).encode(),
                          "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        _tar_add(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        _tar_add(tar, "index.json", data=json.dumps(index).encode(), mode=0o644)
        _tar_add(tar, "blobs", directory=True)
        _tar_add(tar, "blobs/sha256", directory=True)
        for digest, data in blobs.items():
            _tar_add(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", data=data, mode=0o644)
    tmp.rename(out)


def _import_images(d: Layout) -> None:
    d.images.mkdir(parents=True, exist_ok=True)
    layer = None
    for name, cmd in ((BUSYBOX_IMAGE, ["sh"]), (PAUSE_IMAGE, ["sleep", "inf"])):
        tar = d.images / (name.split("/")[1].replace(":", "_") + ".tar")
        if not tar.exists():
            layer = layer or _busybox_layer()
            build_image_tar(name, layer, cmd, tar)
        for ns in NAMESPACES:
            _ctr(d, "-n", ns, "images", "import", str(tar))


# -- process control ------------------------------------------------------------------------------

def _ctr(d: Layout, *args: str) -> str:
    done = subprocess.run([d.tool("ctr"), "--address", str(d.socket), *args], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def running_pid(d: Layout) -> int | None:
    try:
        pid = int(d.pid.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(d.config).encode() in cmdline else None


def env_vars(d: Layout) -> dict[str, str]:
    return {"CONTAINERD_ADDRESS": str(d.socket), "GRAFT_CONTAINERD_DIR": str(d.base),
            "GRAFT_BUSYBOX_IMAGE": BUSYBOX_IMAGE, "GRAFT_PAUSE_IMAGE": PAUSE_IMAGE,
            "GRAFT_RUNTIME_CONFIG": str(d.graft_config),
            **({"GRAFT_POD_SUBNET": d.network.subnet, "GRAFT_POD_GATEWAY": d.network.gateway}
               if d.network_file.exists() else {})}


def start(d: Layout, timeout: float = 30.0, containerd_bin: Path | None = None,
          sandboxer: str = "", fresh: bool = False) -> None:
    if running_pid(d):
        return
    if containerd_bin is not None:
        d.containerd_bin_file.write_text(str(containerd_bin))
    if sandboxer:
        d.sandboxer_file.write_text(sandboxer)
    for sub in (d.bin, d.cni_conf, d.cni_ipam):
        sub.mkdir(parents=True, exist_ok=True)
    if fresh:
        d.config.write_text(fresh_config(d))
    else:
        # containerd finds containerd-shim-graft-v2 on its PATH: this checkout's lean launcher.
        write_launcher(d.bin / "containerd-shim-graft-v2")
        d.config.write_text(_containerd_config(d))
        d.graft_config.write_text(_graft_config())
    if not d.network_file.exists():
        d.network_file.write_text(json.dumps(dataclasses.asdict(_choose_network(d))))
    (d.cni_conf / "10-graft-test.conflist").write_text(_cni_config(d))
    if not d.ip_forward.exists():
        d.ip_forward.write_text(Path("/proc/sys/net/ipv4/ip_forward").read_text())
    launch(d, timeout)
    _import_images(d)


def launch(d: Layout, timeout: float = 30.0) -> int:
    """Run containerd on the existing configuration and wait until it answers (also used to
    restart it with the same directories: running shims are then reconnected)."""
    env = dict(os.environ, PATH=f"{d.bin}:{os.environ.get('PATH', PATH_DIRS)}")
    if d.sandboxer:  # no runtime options then (see _cri_runtime): the shim inherits this
        env["GRAFT_CONFIG"] = str(d.graft_config)
    with open(d.log, "ab") as log:
        proc = subprocess.Popen([d.tool("containerd"), "--config", str(d.config)],
                                stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, env=env, start_new_session=True)
    d.pid.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"containerd exited ({proc.returncode}); see {d.log}")
        try:
            _ctr(d, "version")
            return proc.pid
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not ready after {timeout}s; see {d.log}")
            time.sleep(0.2)


def terminate(d: Layout, grace: float = 10.0) -> None:
    """Stop the containerd process only (SIGTERM, SIGKILL after *grace*): shims, mounts,
    network and state stay, as after a containerd crash or upgrade."""
    pid = running_pid(d)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)
    d.pid.unlink(missing_ok=True)


def _shim_pids(d: Layout) -> list[int]:
    """graft shim daemons this containerd started (they name its socket in their argv)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if is_shim_process(argv, str(d.socket)):
            pids.append(int(entry.name))
    return pids


def _stop_shims(d: Layout, grace: float = 20.0) -> None:
    """Shims a failed test left running: SIGTERM makes each tear its VM down; SIGKILL after
    *grace* (their VMMs die with them: PDEATHSIG)."""
    pids = _shim_pids(d)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (alive := [pid for pid in pids if not _gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_all(alive, signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(d: Layout) -> None:
    terminate(d)
    _stop_shims(d)
    if d.network_file.exists():
        subprocess.run(["ip", "link", "del", d.network.bridge], capture_output=True)
    if d.ip_forward.exists():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(d.ip_forward.read_text())
        d.ip_forward.unlink()
    unmount_under(d.base)


def _gone(pid: int) -> bool:
    """Exited; reaped here when it is our child (started by `start` in this process)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def unmount_under(base: Path) -> None:
    """Lazily unmount everything mounted at or below *base*, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(base) or point.startswith(f"{base}/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def purge(d: Layout) -> None:
    """stop + remove the directory."""
    stop(d)
    shutil.rmtree(d.base, ignore_errors=True)


def restart(d: Layout) -> None:
    """What `systemctl restart containerd` does on a node, for this private one."""
    terminate(d)
    launch(d)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop", "env", "purge", "restart"):
        print(__doc__, file=sys.stderr)
        return 2
    d = Layout(Path(argv[1]))
    if argv[0] == "start":
        d.base.mkdir(parents=True, exist_ok=True)
        start(d)
    elif argv[0] == "restart":
        restart(d)
    elif argv[0] == "stop":
        stop(d)
    elif argv[0] == "purge":
        purge(d)
    for key, value in env_vars(d).items():
        if argv[0] in ("start", "env"):
            print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
