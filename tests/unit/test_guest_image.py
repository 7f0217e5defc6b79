"""Unit tests of the guest image builder's parts (no VM, no network)."""
from __future__ import annotations

import io
import lzma
import re
import random
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from shim.guest_image import builder as builder_mod
from shim.guest_image import sources as sources_mod
from shim.guest_image.agent import AgentSources
from shim.guest_image.builder import build_guest_image
from shim.guest_image.cpio import CpioEntry, entries_from_tree, write_cpio
from shim.guest_image.elf import read_dynamic_info, read_modinfo
from shim.guest_image.errors import GuestImageError
from shim.guest_image.init_script import init_script
from shim.guest_image.kernel import XZ_MAGIC, extract_pvh_elf, order_modules
from shim.guest_image.libraries import index_libraries, resolve_closure
from shim.guest_image.sources import DebRef, HostPackageSources, sha256_file

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils is not installed")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
needs_apt = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="apt is not installed")


# -- synthetic ELF files -------------------------------------------------------------------

def _elf(program_headers: list[tuple[int, bytes]] = (), sections: dict[str, bytes] | None = None) -> bytes:
    """A minimal ELF64 file: each (p_type, payload) becomes a segment, `sections` named sections."""
    body = b""
    phdrs = []
    data_start = 64 + 56 * len(program_headers)
    for p_type, payload in program_headers:
        offset = data_start + len(body)
        phdrs.append(struct.pack("<IIQQQQQQ", p_type, 4, offset, 0, 0, len(payload), len(payload), 4))
        body += payload + b"\0" * (-len(payload) % 8)
    shdrs = b""
    shnum = shstrndx = 0
    if sections:
        names = b"\0"
        entries = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
        for name, payload in list(sections.items()) + [(".shstrtab", None)]:
            name_off = len(names)
            names += name.encode() + b"\0"
            if payload is None:
                payload = names
            offset = data_start + len(body)
            entries.append(struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, offset, len(payload), 0, 0, 1, 0))
            body += payload + b"\0" * (-len(payload) % 8)
        shdrs = b"".join(entries)
        shnum, shstrndx = len(entries), len(entries) - 1
    shoff = data_start + len(body) if shdrs else 0
    header = (b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
              + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64 if phdrs else 0, shoff, 0, 64, 56,
                            len(phdrs), 64, shnum, shstrndx))
    return header + b"".join(phdrs) + body + shdrs


def _xen_note(note_type: int) -> bytes:
    return struct.pack("<III", 4, 4, note_type) + b"Xen\0" + struct.pack("<I", 0x1000000)


def _bzimage(elf: bytes, *, decoy: bool = False) -> bytes:
    prefix = b"MZ" + b"\x90" * 4000
    if decoy:  # the magic also occurs in the setup code, not followed by a valid stream
        prefix += XZ_MAGIC + b"not an xz stream" * 4
    return prefix + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\xde\xad\xbe\xef" * 500


# -- kernel extraction ----------------------------------------------------------------------

@pytest.mark.parametrize("decoy", [False, True])
def test_extract_pvh_elf_ignores_prefix_and_trailing_garbage(decoy: bool) -> None:
    elf = _elf([(4, _xen_note(18))]) + b"kernel text" * 1000
    assert extract_pvh_elf(_bzimage(elf, decoy=decoy)) == elf


def test_extract_pvh_elf_requires_the_pvh_note() -> None:
    elf = _elf([(4, _xen_note(17))])  # a Xen note, but not PHYS32_ENTRY
    with pytest.raises(GuestImageError, match="no PVH entry"):
        extract_pvh_elf(_bzimage(elf), name="vmlinuz-test")


def test_extract_pvh_elf_without_xz_stream() -> None:
    with pytest.raises(GuestImageError, match="vmlinuz-gz: no xz stream"):
        extract_pvh_elf(b"\x1f\x8b" + b"\0" * 1000, name="vmlinuz-gz")


def test_extract_pvh_elf_truncated_stream() -> None:
    blob = _bzimage(_elf([(4, _xen_note(18))]) + random.Random(1).randbytes(100000))  # incompressible
    cut = blob.find(XZ_MAGIC) + 50000
    with pytest.raises(GuestImageError, match="could not extract"):
        extract_pvh_elf(blob[:cut])


# -- kernel modules -------------------------------------------------------------------------

def _module(tmp_path: Path, name: str, depends: str) -> Path:
    path = tmp_path / f"{name}.ko"
    path.write_bytes(_elf(sections={".modinfo": f"license=GPL\0depends={depends}\0name={name}\0".encode()}))
    return path


def test_modinfo_and_dependency_order(tmp_path: Path) -> None:
    mods = {
        "virtio_ring": _module(tmp_path, "virtio_ring", ""),
        "virtio": _module(tmp_path, "virtio", "virtio_ring"),
        "virtio_rng": _module(tmp_path, "virtio-rng", "virtio,virtio_ring"),
        "netfs": _module(tmp_path, "netfs", ""),
        "fscache": _module(tmp_path, "fscache", "netfs"),
        "9p": _module(tmp_path, "9p", "fscache,crc32c"),
    }
    assert read_modinfo(mods["9p"])["depends"] == ["fscache,crc32c"]
    order = order_modules(["virtio-rng", "9p"], mods, builtin={"crc32c"})
    names = [p.name for p in order.files]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio-rng.ko", "netfs.ko", "fscache.ko", "9p.ko"]
    assert set(order.added_dependencies) == {"virtio_ring", "virtio", "netfs", "fscache"}


def test_missing_module_is_named(tmp_path: Path) -> None:
    mods = {"9p": _module(tmp_path, "9p", "9pnet")}
    with pytest.raises(GuestImageError, match=r"kernel module 9pnet \(needed by 9p\)"):
        order_modules(["9p"], mods, builtin=set())


# -- cpio -----------------------------------------------------------------------------------

@needs_cpio
def test_cpio_roundtrip_with_cpio_tool(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (tree / "usr/bin/tool").chmod(0o755)
    (tree / "odd").write_bytes(b"123")  # length not a multiple of 4
    (tree / "bin").symlink_to("usr/bin")
    entries = entries_from_tree(tree) + [
        CpioEntry.file("init", b"#!/bin/sh\n", perm=0o755),
        CpioEntry.directory("dev"),
        CpioEntry.char_device("dev/console", 5, 1),
    ]
    archive = tmp_path / "initrd.cpio"
    with archive.open("wb") as out:
        size = write_cpio(out, entries)
    assert size == archive.stat().st_size and size % 512 == 0

    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=archive.open("rb"), capture_output=True,
                             text=True, check=True).stdout.splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing]
    assert names == ["bin", "dev", "dev/console", "init", "odd", "usr", "usr/bin", "usr/bin/tool"]
    console = next(line for line in listing if line.endswith("dev/console"))
    assert console.startswith("crw") and re.search(r"\b5,\s+1\b", console)
    assert any(line.startswith("lrwx") and line.endswith("bin -> usr/bin") for line in listing)

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
                   stdin=archive.open("rb"), cwd=out, check=True)
    assert (out / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "usr/bin/tool").stat().st_mode) == 0o755
    assert (out / "odd").read_bytes() == b"123"
    assert (out / "init").read_bytes() == b"#!/bin/sh\n"
    assert (out / "bin").is_symlink() and (out / "bin").readlink() == Path("usr/bin")


def test_cpio_is_reproducible_and_rejects_bad_paths() -> None:
    entries = [CpioEntry.file("b", b"x"), CpioEntry.directory("a"), CpioEntry.file("a/c", b"yy")]
    first, second = io.BytesIO(), io.BytesIO()
    write_cpio(first, entries)
    write_cpio(second, list(reversed(entries)))
    assert first.getvalue() == second.getvalue()
    with pytest.raises(GuestImageError, match="duplicate"):
        write_cpio(io.BytesIO(), [CpioEntry.file("a", b""), CpioEntry.file("/a", b"")])
    with pytest.raises(GuestImageError, match="invalid entry path"):
        write_cpio(io.BytesIO(), [CpioEntry.file("../etc/passwd", b"")])


# -- ELF / shared libraries -------------------------------------------------------------------

def _objdump_needed(path: Path) -> list[str]:
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.strip().startswith("NEEDED")]


@needs_objdump
@pytest.mark.parametrize("binary", ["/bin/ls", "/usr/bin/crun", "/usr/bin/qemu-system-x86_64"])
def test_dt_needed_matches_objdump(binary: str) -> None:
    path = Path(binary)
    if not path.is_file():
        pytest.skip(f"{binary} is not installed")
    info = read_dynamic_info(path)
    assert list(info.needed) == _objdump_needed(path)
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"


def test_library_closure_of_a_real_binary() -> None:
    # The host's own root stands in for "unpacked packages" here: the closure walk is the same.
    index = index_libraries([Path("/")])
    closure = resolve_closure({"/usr/bin/ls": Path("/bin/ls")}, index)
    assert {"libc.so.6", "ld-linux-x86-64.so.2"} <= set(closure.libraries)
    assert closure.interpreters == {"/lib64/ld-linux-x86-64.so.2"}
    for soname, path in closure.libraries.items():
        assert path.is_file()
        for needed in read_dynamic_info(path).needed:
            assert needed in closure.libraries, f"{soname} needs {needed}"

    without_libc = {name: path for name, path in index.items() if name != "libc.so.6"}
    with pytest.raises(GuestImageError, match=r"libc\.so\.6 \(needed by /usr/bin/ls\)"):
        resolve_closure({"/usr/bin/ls": Path("/bin/ls")}, without_libc)


# -- /init ------------------------------------------------------------------------------------

def test_init_script_modes() -> None:
    bind = init_script("bind", ["/lib/modules/x/virtio_ring.ko"])
    assert bind.startswith("#!/bin/sh\n")
    assert "insmod /lib/modules/x/virtio_ring.ko" in bind
    assert bind.index("insmod") < bind.index("exec chroot . /usr/bin/python3 -S -P -m graft_agent")
    assert "PYTHONPATH=/usr/lib/graft" in bind and "PYTHONDONTWRITEBYTECODE=1" in bind
    assert "GRAFT_ROOT_PIVOTABLE=0" in init_script("none")
    assert "switch_root /newroot" in init_script("copy")
    with pytest.raises(ValueError):
        init_script("nope")


# -- package sources (apt / pip) --------------------------------------------------------------

def _forbid_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run(argv, **kwargs):  # noqa: ANN001 - mirrors tools.run
        calls.append(list(argv))
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(sources_mod, "run", fake_run)
    return calls


def test_cached_debs_and_wheel_need_no_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb = tmp_path / "debs" / "crun_1%3a1.0_amd64.deb"
    deb.parent.mkdir()
    deb.write_bytes(b"deb content")
    wheel = tmp_path / "wheels" / "protobuf-7.1.0-cp310-abi3-manylinux2014_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"zip")
    calls = _forbid_commands(monkeypatch)
    host = HostPackageSources()
    ref = DebRef("crun", "1:1.0", "amd64", sha256_file(deb))
    assert ref.filename == deb.name
    assert host.fetch_debs([ref], deb.parent) == {"crun": deb}
    assert host.fetch_wheel("protobuf", "7.1.0", wheel.parent) == wheel
    assert calls == []


def test_resolution_is_remembered_while_apt_state_is_unchanged(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "resolution.json"
    host = HostPackageSources(resolution_cache=cache)
    debs = [DebRef("crun", "1.8.1-1", "amd64", "ab" * 32)]
    kernel = DebRef("linux-image-6.1.0-9-amd64", "6.1.1-1", "amd64", "cd" * 32)
    monkeypatch.setattr(sources_mod, "_apt_state", lambda: [["/var/lib/apt/lists/x", 1, 1]])
    host._store_resolution({"names": ["crun"], "kernel": "linux-image-amd64", "arch": "amd64",
                            "apt": [["/var/lib/apt/lists/x", 1, 1]]}, debs, kernel)
    _forbid_commands(monkeypatch)
    assert host.resolve(["crun"], "linux-image-amd64") == (debs, kernel)
    monkeypatch.setattr(sources_mod, "_apt_state", lambda: [["/var/lib/apt/lists/x", 2, 2]])  # apt-get update
    with pytest.raises(AssertionError, match="apt-cache"):
        host.resolve(["crun"], "linux-image-amd64")


@needs_apt
def test_unknown_package_is_named() -> None:
    with pytest.raises(GuestImageError, match="graft-no-such-package"):
        HostPackageSources().resolve(["graft-no-such-package"], "linux-image-amd64")


@needs_apt
def test_failed_download_is_named(tmp_path: Path) -> None:
    ref = DebRef("busybox-static", "0.0-graft-missing", "amd64", "00" * 32)
    with pytest.raises(GuestImageError, match="could not download Debian package.*busybox-static"):
        HostPackageSources().fetch_debs([ref], tmp_path)


def test_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(GuestImageError, match="`apt-get` is not installed"):
        HostPackageSources().fetch_debs([DebRef("crun", "1", "amd64", "")], tmp_path)


# -- the build: cache hits and errors -----------------------------------------------------------

def _build_deb(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / "debsrc" / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n"
                                         f"Maintainer: graft tests <t@example.org>\nDescription: test\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    out = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", "--root-owner-group", str(root), str(out)],
                   check=True, capture_output=True)
    return out


class FakeSources:
    """Serves locally built .deb files; counts what a real source would download."""

    def __init__(self, debs: dict[str, Path], kernel: str) -> None:
        self.debs = debs
        self.kernel = kernel
        self.downloads = 0

    def refs(self) -> list[DebRef]:
        return [DebRef(n, "1.0", "amd64", sha256_file(p)) for n, p in self.debs.items()]

    def resolve(self, names: list[str], kernel_metapackage: str) -> tuple[list[DebRef], DebRef]:
        refs = {r.name: r for r in self.refs()}
        for name in names + [self.kernel]:
            if name not in refs:
                raise GuestImageError(f"Debian package {name} has no installable candidate")
        return [refs[n] for n in names], refs[self.kernel]

    def fetch_debs(self, refs: list[DebRef], cache_dir: Path) -> dict[str, Path]:
        cache_dir.mkdir(parents=True, exist_ok=True)
        out = {}
        for ref in refs:
            target = cache_dir / ref.filename
            if not target.exists():
                shutil.copyfile(self.debs[ref.name], target)
                self.downloads += 1
            out[ref.name] = target
        return out

    def fetch_wheel(self, project: str, version: str, cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        wheel = cache_dir / f"{project}-{version}-cp310-abi3-manylinux2014_x86_64.whl"
        if not wheel.exists():
            wheel.write_bytes(b"wheel")
            self.downloads += 1
        return wheel


@pytest.fixture
def agent_tree(tmp_path: Path) -> AgentSources:
    agent = tmp_path / "src" / "graft_agent"
    (agent / "api" / "gen").mkdir(parents=True)
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text("print('agent')\n")
    (agent / "api" / "gen" / "agent_pb2.py").write_text("")
    ttrpc = tmp_path / "src" / "shim" / "ttrpc"
    ttrpc.mkdir(parents=True)
    (ttrpc / "__init__.py").write_text("")
    return AgentSources(agent, ttrpc)


@pytest.fixture
def fake_sources(tmp_path: Path) -> FakeSources:
    names = list(builder_mod.PROGRAM_PACKAGES + builder_mod.PYTHON_MODULE_PACKAGES
                 + builder_mod.LIBRARY_PACKAGES)
    debs = {name: tmp_path / "dummy.deb" for name in names}
    (tmp_path / "dummy.deb").write_bytes(b"not extracted in these tests")
    debs["linux-image-6.1.0-9-amd64"] = tmp_path / "kernel.deb"
    (tmp_path / "kernel.deb").write_bytes(b"kernel")
    return FakeSources(debs, "linux-image-6.1.0-9-amd64")


def test_unchanged_inputs_are_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          fake_sources: FakeSources, agent_tree: AgentSources) -> None:
    builds: list[Path] = []

    def fake_build(self, work: Path, *args, **kwargs):  # noqa: ANN001 - stands in for _Build._build
        builds.append(work)
        for name in ("vmlinux", "initrd.img"):
            (work / name).write_bytes(name.encode() * 10)
        return {"kernel": {"version": "6.1.0-9-amd64"},
                "outputs": {n: {"size": (work / n).stat().st_size} for n in ("vmlinux", "initrd.img")}}

    monkeypatch.setattr(builder_mod._Build, "_build", fake_build)
    out, cache = tmp_path / "out", tmp_path / "cache"
    lines: list[str] = []

    def build(**kwargs) -> builder_mod.GuestImage:
        return build_guest_image(out, cache_dir=cache, sources=fake_sources, agent_sources=agent_tree,
                                 progress=lines.append, **kwargs)

    first = build()
    assert not first.cached and len(builds) == 1 and first.kernel_version == "6.1.0-9-amd64"
    assert first.kernel.read_bytes() == b"vmlinux" * 10 and first.manifest.is_file()
    assert lines[0].startswith("[1/") and any("[3/" in line for line in lines)
    downloads = fake_sources.downloads

    lines.clear()
    second = build()
    assert second.cached and len(builds) == 1
    assert fake_sources.downloads == downloads
    assert any("up to date" in line for line in lines)

    assert not build(force=True).cached and len(builds) == 2

    (agent_tree.agent / "server.py").write_text("# changed\n")
    assert not build().cached and len(builds) == 3

    (out / "initrd.img").unlink()
    assert not build().cached and len(builds) == 4
    assert build().cached and len(builds) == 4


@needs_dpkg
def test_kernel_package_without_image_is_a_clear_error(tmp_path: Path, fake_sources: FakeSources,
                                                       agent_tree: AgentSources) -> None:
    empty = _build_deb(tmp_path, "empty", {"usr/share/doc/empty/README": b"x"})
    fake_sources.debs = {name: empty for name in fake_sources.debs}
    with pytest.raises(GuestImageError, match=r"kernel image /boot/vmlinuz-6\.1\.0-9-amd64 is missing"):
        build_guest_image(tmp_path / "out", cache_dir=tmp_path / "cache", sources=fake_sources,
                          agent_sources=agent_tree, progress=lambda line: None)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_package_and_bad_options_are_clear_errors(tmp_path: Path, fake_sources: FakeSources,
                                                          agent_tree: AgentSources) -> None:
    del fake_sources.debs["crun"]
    with pytest.raises(GuestImageError, match="crun"):
        build_guest_image(tmp_path / "out", cache_dir=tmp_path / "cache", sources=fake_sources,
                          agent_sources=agent_tree, progress=lambda line: None)
    with pytest.raises(GuestImageError, match="compression"):
        build_guest_image(tmp_path / "out", compression="bzip2", progress=lambda line: None)


def test_agent_without_main_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fake_sources: FakeSources, agent_tree: AgentSources) -> None:
    from shim.guest_image.agent import stage_agent
    from shim.guest_image.layout import Rootfs

    (agent_tree.agent / "__main__.py").unlink()
    with pytest.raises(GuestImageError, match="__main__.py is missing"):
        stage_agent(Rootfs(tmp_path / "root"), agent_tree)


def test_external_imports_are_collected_also_from_functions(agent_tree: AgentSources) -> None:
    from shim.guest_image.agent import external_imports

    (agent_tree.agent / "mod.py").write_text(
        "from __future__ import annotations\nimport os.path\nfrom . import api\nfrom graft_agent import x\n"
        "from shim.ttrpc import Client\n\ndef f():\n    import json\n    from google.protobuf import message\n")
    assert external_imports(agent_tree) == ["google.protobuf", "json", "os.path"]
