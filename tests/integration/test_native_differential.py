"""crun vs the agent's native runtime, in one real VM (TCG): every case of native_cases runs
under both, and what the container observes of itself must be identical.

Also in the same VM: native-only lifecycle facts the comparison cannot show (OOM events and
stats from the native cgroup, update/pause/resume, refusals naming the spec field).
"""
from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

import native_cases as nc
from shim.config import GraftConfig
from shim.sandbox.sandbox import Sandbox
from shim.ttrpc import Code, TtrpcError
from vm_streams import collect

pytestmark = pytest.mark.vm
RUNTIMES = ("crun", "native")
_serial = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def sandbox(graft_config: GraftConfig):
    box = await Sandbox.launch("it-native", graft_config)
    yield box
    await box.stop()


class Run:
    """One container (its own copy of the rootfs) in the sandbox."""

    def __init__(self, box: Sandbox, base_rootfs: Path, work: Path, runtime: str) -> None:
        self.box, self.runtime = box, runtime
        self.cid = f"{runtime}-{next(_serial)}"
        self.host_rootfs = work / self.cid
        subprocess.run(["cp", "-a", str(base_rootfs), str(self.host_rootfs)], check=True)
        self.rootfs = box.add_container_rootfs(self.cid, self.host_rootfs)

    async def create(self, spec: dict, stdin: bool = False) -> None:
        await self.box.agent.create_container(self.cid, json.dumps(spec).encode(), self.rootfs,
                                              stdin=stdin, runtime=self.runtime)

    async def output(self, eid: str = "", with_stderr: bool = True) -> str:
        readers = [collect(self.box, self.cid, eid, "stdout")]
        if with_stderr:
            readers.append(collect(self.box, self.cid, eid, "stderr"))
        streams = await asyncio.wait_for(asyncio.gather(*readers), 120)
        status = await asyncio.wait_for(self.box.agent.wait_process(self.cid, eid), 120)
        text = streams[0].decode(errors="replace").replace("\r\n", "\n")
        if with_stderr:
            text += "\n== stderr\n" + streams[1].decode(errors="replace")
        return text + f"\n== exit {status.exit_status}"

    async def remove(self) -> None:
        try:
            await self.box.agent.remove_container(self.cid, force=True)
        finally:
            self.box.remove_container_rootfs(self.cid)
            shutil.rmtree(self.host_rootfs, ignore_errors=True)


async def _observe(box: Sandbox, base_rootfs: Path, work: Path, name: str, runtime: str) -> str:
    run = Run(box, base_rootfs, work, runtime)
    try:
        case = {c.name: c for c in nc.cases(run.rootfs)}[name]
        spec = nc.base_spec(run.rootfs)
        case.change(spec)

        def with_extra(args: list[str]) -> list[str]:
            return [a + "\n" + case.probe_extra if a == nc.PROBE else a for a in args]
        spec["process"]["args"] = with_extra(spec["process"]["args"])
        await run.create(spec)
        await box.agent.start_container(run.cid)
        if case.exec_process is None:
            text = await run.output(with_stderr=not spec["process"].get("terminal"))
        else:
            process = case.exec_process(spec)
            process["args"] = with_extra(process["args"])
            await box.agent.exec_process(run.cid, "probe", json.dumps(process).encode(), stdin=False)
            text = await run.output("probe", with_stderr=not process.get("terminal"))
        return nc.normalise(text, run.cid, run.rootfs)
    finally:
        await run.remove()


@pytest.mark.parametrize("name", [c.name for c in nc.cases("/rootfs")])
async def test_native_matches_crun(sandbox: Sandbox, busybox_rootfs: Path, tmp_path: Path,
                                   name: str) -> None:
    seen = {runtime: await _observe(sandbox, busybox_rootfs, tmp_path, name, runtime)
            for runtime in RUNTIMES}
    case = {c.name: c for c in nc.cases("/rootfs")}[name]
    crun, native = seen["crun"], seen["native"]
    assert f"== exit {case.exit_status}" in crun, crun
    assert "== status" in crun and "Uid:" in crun, crun   # the probe really ran
    for expected in case.expect:
        assert expected in crun, f"{expected!r} not observed under crun:\n{crun}"
    for unexpected in case.reject:
        assert unexpected not in crun, f"{unexpected!r} observed under crun:\n{crun}"
    if native != crun:
        diff = "\n".join(difflib.unified_diff(crun.splitlines(), native.splitlines(), "crun",
                                              "native", lineterm=""))
        pytest.fail(f"{name}: the container sees something else under the native runtime:\n{diff}")


# -- native-only facts ---------------------------------------------------------------------------

def _spec(run: Run, args: list[str], **resources) -> dict:
    spec = nc.base_spec(run.rootfs)
    spec["process"]["args"] = args
    spec["linux"]["resources"].update(resources)
    return spec


async def test_native_oom_event_and_stats(sandbox: Sandbox, busybox_rootfs: Path, tmp_path: Path) -> None:
    run = Run(sandbox, busybox_rootfs, tmp_path, "native")
    try:
        await run.create(_spec(run, ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1000"],
                               memory={"limit": 16 << 20, "swap": 16 << 20}))
        oom = asyncio.ensure_future(sandbox.agent.get_oom_event())
        await sandbox.agent.start_container(run.cid)
        assert await asyncio.wait_for(oom, 120) == run.cid
        stats = await sandbox.agent.stats_container(run.cid)
        assert stats.memory.usage_limit == 16 << 20
        assert stats.memory.oom_events >= 1
        assert stats.pids.current >= 1
    finally:
        await run.remove()


async def test_native_update_pause_resume(sandbox: Sandbox, busybox_rootfs: Path, tmp_path: Path) -> None:
    run = Run(sandbox, busybox_rootfs, tmp_path, "native")
    try:
        await run.create(_spec(run, ["sleep", "1000"], memory={"limit": 64 << 20}))
        await sandbox.agent.start_container(run.cid)
        await sandbox.agent.update_container(run.cid, json.dumps(
            {"memory": {"limit": 96 << 20}, "pids": {"limit": 50},
             "devices": [{"allow": False, "access": "rwm"}]}).encode())
        stats = await sandbox.agent.stats_container(run.cid)
        assert (stats.memory.usage_limit, stats.pids.limit) == (96 << 20, 50)
        await sandbox.agent.pause_container(run.cid)
        process = {"args": ["true"], "cwd": "/", "env": [f"PATH={nc.PATH}"]}
        await sandbox.agent.resume_container(run.cid)
        await sandbox.agent.exec_process(run.cid, "after-resume", json.dumps(process).encode(), stdin=False)
        status = await asyncio.wait_for(sandbox.agent.wait_process(run.cid, "after-resume"), 60)
        assert status.exit_status == 0
    finally:
        await run.remove()


@pytest.mark.parametrize("field, change", [
    ("linux.namespaces[4]: user namespaces", lambda s: s["linux"]["namespaces"].append({"type": "user"})),
    ("process.apparmorProfile", lambda s: s["process"].update(apparmorProfile="runtime/default")),
    ("linux.intelRdt", lambda s: s["linux"].update(intelRdt={"closID": "x"})),
    ("linux.resources.memory.kernel", lambda s: s["linux"]["resources"].update(memory={"kernel": 1 << 20})),
    ("mounts[8].options: option 'idmap'", lambda s: s["mounts"].append(
        {"destination": "/x", "type": "bind", "source": "/tmp", "options": ["bind", "idmap"]})),
])
async def test_native_refuses_what_it_does_not_support(sandbox: Sandbox, busybox_rootfs: Path,
                                                      tmp_path: Path, field: str, change) -> None:
    run = Run(sandbox, busybox_rootfs, tmp_path, "native")
    try:
        spec = _spec(run, ["true"])
        change(spec)
        with pytest.raises(TtrpcError) as err:
            await run.create(spec)
        assert err.value.code == Code.INVALID_ARGUMENT
        assert field in err.value.message
    finally:
        run.box.remove_container_rootfs(run.cid)
        shutil.rmtree(run.host_rootfs, ignore_errors=True)
