"""`conformance.kit.cluster.namespace`: run ids and namespace names (DNS labels, distinct per call),
the namespace's labels (managed-by, run, pod-security privileged), validated against the
Kubernetes schema, and the one-line pod description of namespace dumps."""

from __future__ import annotations

import re

import kubernetes_validate
from hypothesis import given
from hypothesis import strategies as st
from kube_objects import pod_with

from conformance.kit.cluster import inventory, namespace
from conformance.kit.probes.podspecs import to_manifest

K8S_VERSION = "1.33"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=80))
def test_namespace_names_are_dns_labels(worker: str) -> None:
    run_id = namespace.new_run_id()
    name = namespace.namespace_name(run_id, worker.strip("-") or "gw0")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert name.startswith(f"netconform-{run_id}")


def test_namespace_names_differ_and_are_labelled() -> None:
    run_id = namespace.new_run_id()
    assert namespace.namespace_name(run_id) != namespace.namespace_name(run_id)
    manifest = to_manifest(namespace.namespace_manifest("netconform-x-1", run_id))
    labels = manifest["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "k8s-netconform"
    assert labels["netconform/run"] == run_id
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert namespace.selector_for_run(run_id).endswith(f"netconform/run={run_id}")


def test_pod_description_for_dumps() -> None:
    text = inventory.describe_pod(pod_with("ErrImagePull"))
    assert text.startswith("pod probe-n1 node=n1 phase=Pending")
    assert "container a: waiting (ErrImagePull: details)" in text
    assert "restarts=2" in text
