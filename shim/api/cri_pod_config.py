"""The fields of CRI's `runtime.v1.PodSandboxConfig` graft reads, decodable without CRI's proto.

containerd 2.x hands the pod's CRI configuration to the Sandbox API's CreateSandbox as its
`options` Any. graft needs a handful of its fields (hostname, annotations, the pod's resource
limits, which namespaces it wants from the node). Their numbers are the k8s cri-api's (tests/unit checks them against the PyPI cri_api
bindings); the messages are assembled here in a private descriptor pool, so unknown fields are
skipped and nothing clashes with a full CRI binding loaded in the same process.
"""
from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

TYPE_NAME = "runtime.v1.PodSandboxConfig"

_F = descriptor_pb2.FieldDescriptorProto


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, field_type: int,
           type_name: str = "", repeated: bool = False) -> None:
    field = message.field.add(name=name, number=number, type=field_type,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


def _string_map(message: descriptor_pb2.DescriptorProto, name: str, number: int,
                entry: str) -> None:
    nested = message.nested_type.add(name=entry)
    nested.options.map_entry = True
    _field(nested, "key", 1, _F.TYPE_STRING)
    _field(nested, "value", 2, _F.TYPE_STRING)
    _field(message, name, number, _F.TYPE_MESSAGE,
           f".runtime.v1.{message.name}.{entry}", repeated=True)


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="graft/cri_pod_config.proto",
                                              package="runtime.v1", syntax="proto3")
    metadata = file.message_type.add(name="PodSandboxMetadata")
    _field(metadata, "name", 1, _F.TYPE_STRING)
    _field(metadata, "uid", 2, _F.TYPE_STRING)
    _field(metadata, "namespace", 3, _F.TYPE_STRING)
    _field(metadata, "attempt", 4, _F.TYPE_UINT32)
    resources = file.message_type.add(name="LinuxContainerResources")
    _field(resources, "cpu_period", 1, _F.TYPE_INT64)
    _field(resources, "cpu_quota", 2, _F.TYPE_INT64)
    _field(resources, "cpu_shares", 3, _F.TYPE_INT64)
    _field(resources, "memory_limit_in_bytes", 4, _F.TYPE_INT64)
    # NamespaceMode values (an enum in CRI; the same varints as int32): POD 0, CONTAINER 1, NODE 2
    namespaces = file.message_type.add(name="NamespaceOption")
    for name, number in (("network", 1), ("pid", 2), ("ipc", 3)):
        _field(namespaces, name, number, _F.TYPE_INT32)
    security = file.message_type.add(name="LinuxSandboxSecurityContext")
    _field(security, "namespace_options", 1, _F.TYPE_MESSAGE, ".runtime.v1.NamespaceOption")
    linux = file.message_type.add(name="LinuxPodSandboxConfig")
    _field(linux, "cgroup_parent", 1, _F.TYPE_STRING)
    _field(linux, "security_context", 2, _F.TYPE_MESSAGE, ".runtime.v1.LinuxSandboxSecurityContext")
    _field(linux, "resources", 5, _F.TYPE_MESSAGE, ".runtime.v1.LinuxContainerResources")
    config = file.message_type.add(name="PodSandboxConfig")
    _field(config, "metadata", 1, _F.TYPE_MESSAGE, ".runtime.v1.PodSandboxMetadata")
    _field(config, "hostname", 2, _F.TYPE_STRING)
    _field(config, "log_directory", 3, _F.TYPE_STRING)
    _string_map(config, "labels", 6, "LabelsEntry")
    _string_map(config, "annotations", 7, "AnnotationsEntry")
    _field(config, "linux", 8, _F.TYPE_MESSAGE, ".runtime.v1.LinuxPodSandboxConfig")
    return file


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(_file().SerializeToString())

PodSandboxConfig = message_factory.GetMessageClass(_pool.FindMessageTypeByName(TYPE_NAME))
NODE = 2  # NamespaceMode: the node's namespace


def node_namespaces(config: Message) -> list[str]:
    """Which of network, pid and ipc the pod asks to share with the node (hostNetwork...)."""
    options = config.linux.security_context.namespace_options
    return [name for name in ("network", "pid", "ipc") if getattr(options, name) == NODE]


def unpack(options: any_pb2.Any) -> Message | None:
    """The PodSandboxConfig inside *options*; None when *options* is empty. ValueError when it
    holds another type or does not decode."""
    if not options.type_url and not options.value:
        return None
    if options.type_url.rsplit("/", 1)[-1] != TYPE_NAME:
        raise ValueError(f"sandbox options: expected {TYPE_NAME}, got {options.type_url!r}")
    try:
        return PodSandboxConfig.FromString(options.value)
    except DecodeError as exc:
        raise ValueError(f"sandbox options: undecodable {TYPE_NAME}: {exc}") from exc
