"""The generated containerd bindings load together with everything else in one process."""
from __future__ import annotations

from shim.api import containerd_protos


def test_task_service_has_all_17_methods_and_modules_coexist():
    import shim.ttrpc.messages  # noqa: F401  (own google.rpc.Status in a private pool)
    from graft_agent.api import agent_pb2  # noqa: F401
    from shim.api.containerd import TASK_SERVICE, cgroups_v1_pb2, cgroups_v2_pb2, events_pb2
    from shim.api.gen.google.rpc import status_pb2

    assert [m.name for m in TASK_SERVICE.methods] == [
        "State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill",
        "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown"]
    assert cgroups_v2_pb2.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"
    assert cgroups_v1_pb2.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert events_pb2.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"
    assert status_pb2.Status.DESCRIPTOR.full_name == "google.rpc.Status"


def test_sandbox_service_has_its_nine_methods_and_shares_the_task_mount_type():
    from shim.api.containerd import SANDBOX_SERVICE, mount_pb2, sandbox_pb2

    assert [m.name for m in SANDBOX_SERVICE.methods] == [
        "CreateSandbox", "StartSandbox", "Platform", "StopSandbox", "WaitSandbox",
        "SandboxStatus", "PingSandbox", "ShutdownSandbox", "SandboxMetrics"]
    assert SANDBOX_SERVICE.full_name == "containerd.runtime.sandbox.v1.Sandbox"
    rootfs = sandbox_pb2.CreateSandboxRequest.DESCRIPTOR.fields_by_name["rootfs"]
    assert rootfs.message_type is mount_pb2.Mount.DESCRIPTOR  # one containerd.types.Mount
    platform = sandbox_pb2.PlatformResponse.DESCRIPTOR.fields_by_name["platform"].message_type
    assert platform.fields_by_name["os_version"].number == 4  # the 2.x message, not 1.6's

def test_gogo_cleanup_keeps_other_options():
    text = '''syntax = "proto3";
import weak "gogoproto/gogo.proto";
import "github.com/containerd/containerd/api/types/mount.proto";
option (gogoproto.sizer_all) = true;
message M {
    option (containerd.plugin.fieldpath) = true;
    string a = 1 [(gogoproto.customname) = "A,b", deprecated = true];
    google.protobuf.Timestamp t = 2 [(gogoproto.stdtime) = true, (gogoproto.nullable) = false];
}
'''
    out = containerd_protos.clean_proto(text, {
        "github.com/containerd/containerd/api/types/mount.proto": "x/mount.proto"})
    assert "gogo" not in out and "containerd.plugin" not in out
    assert 'import "x/mount.proto";' in out
    assert "string a = 1 [deprecated = true];" in out
    assert "google.protobuf.Timestamp t = 2;" in out
