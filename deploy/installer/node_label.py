"""The node label that tells the scheduler graft is installed (the RuntimeClass's
``scheduling.nodeSelector`` names it). Set through the API server with the DaemonSet's
service account (RBAC: nodes get/patch)."""
from __future__ import annotations

from typing import Any

from .host import InstallError


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InstallError(f"--node-label {text!r}: expected KEY=VALUE")
    return key, value


def core_api() -> Any:
    """CoreV1Api from the pod's service account (in-cluster configuration)."""
    try:
        from kubernetes import client, config
        config.load_incluster_config()
    except Exception as exc:  # ImportError, ConfigException: both mean "cannot label"
        raise InstallError(f"cannot reach the Kubernetes API to label the node: {exc}") from exc
    return client.CoreV1Api()


def _patch(api: Any, node: str, labels: dict[str, str | None]) -> None:
    try:
        api.patch_node(node, {"metadata": {"labels": labels}})
    except Exception as exc:  # kubernetes.client.ApiException and transport errors
        raise InstallError(f"labelling node {node}: {exc}") from exc


def set_label(api: Any, node: str, label: str) -> None:
    key, value = parse_label(label)
    _patch(api, node, {key: value})


def remove_label(api: Any, node: str, label: str) -> None:
    key, _ = parse_label(label)
    _patch(api, node, {key: None})  # null in a merge patch deletes the key
