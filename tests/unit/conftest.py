"""Fixtures shared by unit tests."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A minimal OCI bundle as containerd lays it out (rootfs + config.json)."""
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2", "process": {"args": ["sh"]},
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]}}))
    return b


@pytest.fixture(scope="module")
def agent_runtime() -> str:
    """The agent's default container runtime in agent_process (a module may override this
    fixture, e.g. parametrized over several runtimes)."""
    return "crun"


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory: pytest.TempPathFactory, agent_runtime: str):
    """The guest agent running on the host (isolated namespaces), one per module; it must
    exit cleanly and leave nothing behind."""
    from agent_harness import AgentProcess  # same directory (pytest puts it on sys.path)

    agent = AgentProcess(tmp_path_factory.mktemp("agent"), runtime=agent_runtime)
    agent.start()
    yield agent
    rc = agent.stop()
    leftovers = agent.leftovers()
    assert rc == 0, agent.log()
    assert not leftovers, f"{leftovers}\n{agent.log()}"


@pytest.fixture(scope="module", params=["crun", "native"])
def each_runtime(request) -> str:
    """Every guest runtime in turn (a module opts in by overriding agent_runtime with it:
    one agent_process per runtime)."""
    return request.param


@pytest_asyncio.fixture
async def agent(agent_process):
    """A ttrpc client of the module's agent process."""
    from agent_harness import AgentClient

    client = await AgentClient.connect(agent_process)
    yield client
    await client.close()


@pytest.fixture
def sock_path():
    # pytest's tmp_path can exceed the 108-byte unix socket path limit.
    directory = tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp")
    yield os.path.join(directory, "s")
    shutil.rmtree(directory, ignore_errors=True)
