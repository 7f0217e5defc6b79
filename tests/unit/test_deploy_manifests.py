"""deploy/manifests/*.yaml against the Kubernetes API schema: every document is validated
into the kubernetes client's typed model for its apiVersion/kind (pydantic models that
reject unknown fields and wrong types), and the pieces that must agree with each other and
with the installer do."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from kubernetes.client import models
from pydantic import BaseModel, ValidationError

from deploy import pod_overhead
from deploy.installer import cli, steps

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "manifests"


def _model_class(doc: dict) -> type[BaseModel]:
    version = doc["apiVersion"].rsplit("/", 1)[-1]  # apps/v1 → v1
    cls = getattr(models, version.capitalize() + doc["kind"], None)
    assert cls is not None, f"no model for {doc['apiVersion']} {doc['kind']}"
    return cls


def _validated(doc: dict) -> BaseModel:
    return _model_class(doc).model_validate(doc)


def _documents() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


DOCS = _documents()


@pytest.mark.parametrize("key", list(DOCS), ids=[f"{k}/{n}" for k, n in DOCS])
def test_document_matches_the_api_schema(key):
    obj = _validated(DOCS[key])
    assert obj.kind == key[0] and obj.metadata.name == key[1]


def test_the_validation_is_strict():
    """The client's models really reject what the API server would (so the test above can
    fail): an unknown field, a wrong type, a missing required field."""
    rc = DOCS[("RuntimeClass", "graft")]
    with pytest.raises(ValidationError, match="podFixd"):
        _validated({**rc, "overhead": {"podFixd": {"memory": "1Mi"}}})
    ds = DOCS[("DaemonSet", "graft-deploy")]
    spec = {**ds["spec"]["template"]["spec"], "hostPID": "yes"}
    with pytest.raises(ValidationError, match="hostPID"):
        _validated({**ds, "spec": {**ds["spec"], "template": {**ds["spec"]["template"],
                                                               "spec": spec}}})
    with pytest.raises(ValidationError, match="handler"):
        _validated({k: v for k, v in rc.items() if k != "handler"})


def test_runtime_class_matches_the_installer():
    rc = _validated(DOCS[("RuntimeClass", "graft")])
    assert rc.handler == steps.Options().handler
    key, value = steps.DEFAULT_NODE_LABEL.split("=")
    assert rc.scheduling.node_selector == {key: value}
    assert set(rc.overhead.pod_fixed) == {"memory", "cpu"}


def test_pod_overhead_covers_what_the_pod_benchmark_last_measured():
    """The RuntimeClass declares what bench/pods.py measured a template pod to cost (its
    last results are committed): at least that, rounded up by less than 10%."""
    import json

    declared = pod_overhead.declared()
    results = Path(__file__).resolve().parents[2] / "bench" / "results" / "pods.json"
    measured = json.loads(results.read_text())["concurrent"]["graft_template"]
    pss, cpu = measured["pss_per_pod_mib"], measured["idle_cpu_cores_per_pod"]
    assert pss <= declared.memory_mib < pss * 1.1
    assert cpu <= declared.cpu_cores < max(cpu * 1.5, cpu + 0.005)


def _installer_container():
    ds = _validated(DOCS[("DaemonSet", "graft-deploy")])
    (container,) = ds.spec.template.spec.containers
    return ds, container


def test_daemonset_runs_install_and_removes_on_stop():
    ds, c = _installer_container()
    assert c.command[1:] == ["-m", "deploy.installer", "install", "--wait"]
    assert c.lifecycle.pre_stop.var_exec.command[1:] == ["-m", "deploy.installer", "remove"]
    assert c.command[0] == c.lifecycle.pre_stop.var_exec.command[0]
    assert c.security_context.privileged is True
    pod = ds.spec.template.spec
    assert pod.host_pid is True  # nsenter --target 1
    assert ds.spec.selector.match_labels == ds.spec.template.metadata.labels
    env = {e.name: e for e in c.env}
    (mount,) = c.volume_mounts
    (volume,) = pod.volumes
    assert mount.name == volume.name and volume.host_path.path == "/"
    assert env["GRAFT_DEPLOY_HOST_ROOT"].value == mount.mount_path
    assert env["GRAFT_DEPLOY_NODE_NAME"].value_from.field_ref.field_path == "spec.nodeName"


def test_daemonset_env_names_real_installer_options():
    _, c = _installer_container()
    options = {("set" if f.name == "settings" else f.name).upper() for f in fields(steps.Options)}
    for e in c.env:
        assert e.name.startswith(cli.ENV_PREFIX), e.name
        assert e.name[len(cli.ENV_PREFIX):] in options, e.name


def test_rbac_lets_the_installer_label_its_node():
    ds, _ = _installer_container()
    sa = _validated(DOCS[("ServiceAccount", "graft-deploy")])
    binding = _validated(DOCS[("ClusterRoleBinding", "graft-deploy-node-labeler")])
    role = _validated(DOCS[("ClusterRole", binding.role_ref.name)])
    assert ds.spec.template.spec.service_account_name == sa.metadata.name
    (subject,) = binding.subjects
    assert (subject.kind, subject.name, subject.namespace) == \
        ("ServiceAccount", sa.metadata.name, sa.metadata.namespace)
    (rule,) = role.rules
    assert rule.resources == ["nodes"] and {"get", "patch"} <= set(rule.verbs)


def test_example_pod_uses_the_runtime_class():
    pod = _validated(DOCS[("Pod", "graft-hello")])
    assert pod.spec.runtime_class_name == "graft"
    assert all(key.startswith("io.graft.") for key in pod.metadata.annotations)
