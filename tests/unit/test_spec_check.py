"""OCI documents from containerd: what is refused (InvalidArgument, naming the field) and what
is read the way runc reads it."""
from __future__ import annotations

import pytest

from shim.task.errors import InvalidArgument
from shim.task.spec_check import check_process, check_spec, runc_compatible


def _spec(**process) -> dict:
    return {"process": {"args": ["true"], **process}, "linux": {}}


@pytest.mark.parametrize("spec, field", [
    ({}, "no process"),
    ({"process": "sh"}, "process: expected an object"),
    (_spec(args=[]), "process.args"),
    (_spec(args=["sh", 3]), "process.args"),
    (_spec(rlimits=[{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]), "unknown rlimit"),
    (_spec(rlimits=[{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}]), "exceeds hard"),
    (_spec(rlimits=[{"type": "RLIMIT_NOFILE", "hard": 2 ** 64 - 1, "soft": 1}]), "out of range"),
    (_spec(rlimits=[{"type": "RLIMIT_CORE", "hard": -1, "soft": 0}]), "out of range"),
    (_spec(rlimits=[{"type": "RLIMIT_CORE", "hard": "lots", "soft": 0}]), "expected an integer"),
    ({"process": {"args": ["x"]}, "linux": {"resources": {"memory": {"limit": -5}}}},
     "memory.limit"),
    ({"process": {"args": ["x"]}, "linux": {"resources": {"cpu": {"shares": -1}}}}, "cpu.shares"),
    ({"process": {"args": ["x"]}, "linux": {"resources": {"cpu": {"quota": True}}}}, "cpu.quota"),
    ({"process": {"args": ["x"]}, "linux": {"resources": {"memory": []}}}, "memory: expected"),
])
def test_bad_specs_are_refused_naming_the_field(spec, field):
    with pytest.raises(InvalidArgument, match=field.replace("(", r"\(")):
        check_spec(spec)


def test_good_specs_pass_and_unlimited_values_are_allowed():
    check_spec(_spec(rlimits=[{"type": "RLIMIT_CORE", "hard": 2 ** 64 - 1, "soft": 0},
                              {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]))
    check_spec({"process": {"args": ["x"]}, "linux": {"resources": {
        "memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1, "shares": 1024},
        "pids": {"limit": -1}, "unknownController": {"x": -9}}}})
    check_process({"args": ["sh"], "rlimits": None})


def test_a_pids_limit_of_zero_or_less_means_no_limit_as_for_runc():
    spec = {"process": {"args": ["x"]}, "linux": {"resources": {"pids": {"limit": -7},
                                                                "memory": {"limit": 5}}}}
    out = runc_compatible(spec)
    assert "pids" not in out["linux"]["resources"] and out["linux"]["resources"]["memory"]
    assert spec["linux"]["resources"]["pids"] == {"limit": -7}  # the input is left alone
    same = {"process": {"args": ["x"]}, "linux": {"resources": {"pids": {"limit": 3}}}}
    assert runc_compatible(same) is same
