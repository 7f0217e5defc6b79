"""The part of Cloud Hypervisor's OpenAPI spec (vmm/src/api/openapi/cloud-hypervisor.yaml) that
clh_fake.py checks requests against: request body schemas, endpoints and their methods."""
from __future__ import annotations

from typing import Any

# field -> (type, required). Types: "str" "int" "bool" "object" (unchecked),
# ("enum", values), ("list", type), or the name of another schema.
SCHEMAS: dict[str, dict[str, tuple[Any, bool]]] = {
    "VmConfig": {
        "cpus": ("CpusConfig", False), "memory": ("MemoryConfig", False),
        "payload": ("PayloadConfig", True), "rng": ("RngConfig", False),
        "serial": ("ConsoleConfig", False), "console": ("ConsoleConfig", False),
        "vsock": ("VsockConfig", False), "fs": (("list", "FsConfig"), False),
        "net": (("list", "NetConfig"), False), "disks": (("list", "object"), False),
        "iommu": ("bool", False), "watchdog": ("bool", False), "pvpanic": ("bool", False),
        "platform": ("object", False), "balloon": ("object", False), "rtc": ("object", False),
    },
    "CpusConfig": {
        "boot_vcpus": ("int", True), "max_vcpus": ("int", True), "topology": ("object", False),
        "kvm_hyperv": ("bool", False), "max_phys_bits": ("int", False), "nested": ("bool", False),
        "affinity": (("list", "object"), False), "features": ("object", False),
    },
    "MemoryConfig": {
        "size": ("int", True), "hotplug_size": ("int", False), "hotplugged_size": ("int", False),
        "mergeable": ("bool", False), "hotplug_method": (("enum", ("Acpi", "VirtioMem")), False),
        "shared": ("bool", False), "hugepages": ("bool", False), "hugepage_size": ("int", False),
        "prefault": ("bool", False), "reserve": ("bool", False), "thp": ("bool", False),
        "zones": (("list", "MemoryZoneConfig"), False),
    },
    "MemoryZoneConfig": {
        "id": ("str", True), "size": ("int", True), "file": ("str", False),
        "mergeable": ("bool", False), "shared": ("bool", False), "hugepages": ("bool", False),
        "hugepage_size": ("int", False), "host_numa_node": ("int", False),
        "hotplug_size": ("int", False), "hotplugged_size": ("int", False),
        "prefault": ("bool", False), "reserve": ("bool", False),
    },
    "PayloadConfig": {
        "firmware": ("str", False), "kernel": ("str", False), "cmdline": ("str", False),
        "initramfs": ("str", False), "igvm": ("str", False), "host_data": ("str", False),
    },
    "RngConfig": {"src": ("str", True), "iommu": ("bool", False), "id": ("str", False)},
    "ConsoleConfig": {
        "mode": (("enum", ("Off", "Pty", "Tty", "File", "Socket", "Null")), True),
        "file": ("str", False), "socket": ("str", False), "iommu": ("bool", False),
    },
    "VsockConfig": {
        "cid": ("int", True), "socket": ("str", True), "iommu": ("bool", False),
        "pci_segment": ("int", False), "id": ("str", False),
    },
    "FsConfig": {
        "tag": ("str", True), "socket": ("str", True), "num_queues": ("int", True),
        "queue_size": ("int", True), "pci_segment": ("int", False), "id": ("str", False),
    },
    "NetConfig": {
        "tap": ("str", False), "ip": ("str", False), "mask": ("str", False), "mac": ("str", False),
        "host_mac": ("str", False), "mtu": ("int", False), "iommu": ("bool", False),
        "num_queues": ("int", False), "queue_size": ("int", False), "vhost_user": ("bool", False),
        "vhost_socket": ("str", False), "vhost_mode": ("str", False), "id": ("str", False),
        "pci_segment": ("int", False), "rate_limiter_config": ("object", False),
        "offload_tso": ("bool", False), "offload_ufo": ("bool", False), "offload_csum": ("bool", False),
    },
    "VmSnapshotConfig": {"destination_url": ("str", True)},
    "RestoreConfig": {
        "source_url": ("str", True), "prefault": ("bool", False),
        "memory_restore_mode": (("enum", ("Copy", "OnDemand", "CopyOnWrite")), False),
        "resume": ("bool", False),
    },
    "VmResize": {"desired_vcpus": ("int", False), "desired_ram": ("int", False),
                 "desired_balloon": ("int", False)},
}

# endpoint -> (method, body schema or None)
ENDPOINTS: dict[str, tuple[str, str | None]] = {
    "vmm.ping": ("GET", None), "vmm.shutdown": ("PUT", None), "vm.info": ("GET", None),
    "vm.create": ("PUT", "VmConfig"), "vm.boot": ("PUT", None), "vm.pause": ("PUT", None),
    "vm.resume": ("PUT", None), "vm.shutdown": ("PUT", None), "vm.delete": ("PUT", None),
    "vm.snapshot": ("PUT", "VmSnapshotConfig"), "vm.restore": ("PUT", "RestoreConfig"),
    "vm.add-net": ("PUT", "NetConfig"), "vm.resize": ("PUT", "VmResize"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def validate(value: Any, kind: Any, where: str) -> None:
    if isinstance(kind, tuple) and kind[0] == "enum":
        if value not in kind[1]:
            raise ApiError(400, f"{where}: {value!r} not one of {list(kind[1])}")
    elif isinstance(kind, tuple) and kind[0] == "list":
        if not isinstance(value, list):
            raise ApiError(400, f"{where}: expected an array")
        for i, item in enumerate(value):
            validate(item, kind[1], f"{where}[{i}]")
    elif kind == "str":
        if not isinstance(value, str):
            raise ApiError(400, f"{where}: expected a string")
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"{where}: expected an integer")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ApiError(400, f"{where}: expected a boolean")
    elif kind == "object":
        if not isinstance(value, dict):
            raise ApiError(400, f"{where}: expected an object")
    else:
        schema = SCHEMAS[kind]
        if not isinstance(value, dict):
            raise ApiError(400, f"{where}: expected a {kind} object")
        for name in value:
            if name not in schema:
                raise ApiError(400, f"{where}: unknown field {name!r} in {kind}")
        for name, (field_kind, required) in schema.items():
            if name in value:
                validate(value[name], field_kind, f"{where}.{name}")
            elif required:
                raise ApiError(400, f"{where}: missing required field {name!r} of {kind}")
