"""The server through the official kubernetes client: namespaces, pods, watch, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from live_api import LiveServer, new_watch, pod_body, scratch_namespace, wait_ready, watch_until


@pytest.fixture
def ns(live: LiveServer) -> Iterator[str]:
    with scratch_namespace(live, "t") as name:
        yield name


def test_initial_namespaces_and_nodes(live: LiveServer) -> None:
    names = {n.metadata.name for n in live.core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    nodes = live.core.list_node().items
    assert [n.metadata.name for n in nodes] == ["node-1", "node-2", "node-3"]
    node = live.core.read_node("node-1")
    assert node.spec.pod_cidr == "10.244.0.0/24"
    assert node.spec.pod_cidrs == ["10.244.0.0/24"]
    assert {(a.type, a.address) for a in node.status.addresses} == {
        ("InternalIP", "172.18.0.2"),
        ("Hostname", "node-1"),
    }
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert node.status.node_info.kubelet_version == "v1.31.0-netlab"
    assert live.core.read_node("node-3").spec.taints[0].key == "dedicated"


def test_pod_lifecycle(live: LiveServer, ns: str) -> None:
    created = live.core.create_namespaced_pod(ns, pod_body("web", labels={"app": "web"}))
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.spec.restart_policy == "Always"
    assert created.spec.dns_policy == "ClusterFirst"
    assert created.spec.termination_grace_period_seconds == 30
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert created.spec.containers[0].termination_message_path == "/dev/termination-log"
    assert {t.key for t in created.spec.tolerations} == {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    }
    assert created.status.phase == "Pending"
    pod = wait_ready(live, ns, "web")
    assert pod.spec.node_name in ("node-1", "node-2")  # node-3 is tainted
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert scheduled
    assert scheduled[0].status == "True"
    events = live.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name=web,involvedObject.uid={pod.metadata.uid}"
    ).items
    assert {"Scheduled", "Started"} <= {e.reason for e in events}
    deleted = live.core.delete_namespaced_pod("web", ns, grace_period_seconds=3)
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 3
    seen = watch_until(
        live.core.list_namespaced_pod,
        ns,
        resource_version=deleted.metadata.resource_version,
        timeout_seconds=5,
        until=lambda events: True,
    )
    assert [event["type"] for event in seen] == ["DELETED"]
    with pytest.raises(ApiException) as info:
        live.core.read_namespaced_pod("web", ns)
    assert info.value.status == 404
    assert any(
        uid == pod.metadata.uid and grace == 3 for a in live.agents for uid, grace in a.stop_calls
    )


def test_generate_name_and_conflicts(live: LiveServer, ns: str) -> None:
    body = pod_body("")
    body["metadata"] = {"generateName": "gen-"}
    pod = live.core.create_namespaced_pod(ns, body)
    assert pod.metadata.name.startswith("gen-")
    assert len(pod.metadata.name) == 9
    with pytest.raises(ApiException) as info:
        live.core.create_namespaced_pod(ns, pod_body(pod.metadata.name))
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        live.core.create_namespaced_pod("no-such-ns", pod_body("x"))
    assert info.value.status == 404
    assert json.loads(str(info.value.body))["message"] == 'namespaces "no-such-ns" not found'
    with pytest.raises(ApiException) as info:
        live.core.create_namespaced_pod(ns, pod_body("Bad_Name"))
    assert info.value.status == 422
    assert "metadata.name" in str(info.value.body)
    status, _, body = live.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": 5}]}},
    )
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.containers[0].image"
    names = [p.metadata.name for p in live.core.list_namespaced_pod(ns).items]
    assert names == [pod.metadata.name]  # nothing stored on a rejected write


def test_unschedulable_stays_pending(live: LiveServer, ns: str) -> None:
    live.core.create_namespaced_pod(ns, pod_body("nowhere", nodeSelector={"netlab.io/index": "9"}))

    def unschedulable(events: list[Any]) -> bool:
        conditions = events[-1]["object"].status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    watch_until(
        live.core.list_namespaced_pod,
        ns,
        timeout_seconds=5,
        until=unschedulable,
        missing="no Unschedulable condition",
    )
    pod = live.core.read_namespaced_pod("nowhere", ns)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name
    reasons = {
        e.reason
        for e in live.core.list_namespaced_event(
            ns, field_selector="involvedObject.name=nowhere"
        ).items
    }
    assert "FailedScheduling" in reasons
    tolerating = pod_body(
        "infra",
        nodeSelector={"netlab.io/index": "3"},
        tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
        ],
    )
    live.core.create_namespaced_pod(ns, tolerating)
    assert wait_ready(live, ns, "infra").spec.node_name == "node-3"


def test_selectors_and_deletecollection(live: LiveServer, ns: str) -> None:
    for i in range(6):
        live.core.create_namespaced_pod(
            ns, pod_body(f"p{i}", labels={"tier": "a" if i % 2 else "b", "i": str(i)})
        )
    assert len(live.core.list_namespaced_pod(ns, label_selector="tier=a").items) == 3
    assert (
        len(live.core.list_namespaced_pod(ns, label_selector="tier in (a,b),i notin (0,1)").items)
        == 4
    )
    assert len(live.core.list_namespaced_pod(ns, label_selector="!tier").items) == 0
    assert [
        p.metadata.name
        for p in live.core.list_namespaced_pod(ns, field_selector="metadata.name=p2").items
    ] == ["p2"]
    every = live.core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items
    assert len(every) == 6
    with pytest.raises(ApiException) as info:
        live.core.list_namespaced_pod(ns, field_selector="spec.bogus=1")
    assert info.value.status == 400
    with pytest.raises(ApiException) as info:
        live.core.list_namespaced_pod(ns, label_selector="a in (b")
    assert info.value.status == 400
    since = live.core.list_namespaced_pod(ns).metadata.resource_version
    live.core.delete_collection_namespaced_pod(ns, label_selector="tier=a", grace_period_seconds=0)

    def deleted(events: list[Any]) -> set[str]:
        return {e["object"].metadata.name for e in events if e["type"] == "DELETED"}

    events = watch_until(
        live.core.list_namespaced_pod,
        ns,
        label_selector="tier=a",
        resource_version=since,
        timeout_seconds=5,
        until=lambda seen: len(deleted(seen)) == 3,
    )
    assert deleted(events) == {"p1", "p3", "p5"}
    assert sorted(p.metadata.name for p in live.core.list_namespaced_pod(ns).items) == [
        "p0",
        "p2",
        "p4",
    ]


def test_watch_selector_leave_is_deleted_and_410(live: LiveServer, ns: str) -> None:
    live.core.create_namespaced_pod(ns, pod_body("mover", labels={"team": "x"}))
    start = live.core.list_namespaced_pod(ns, label_selector="team=x").metadata.resource_version
    live.core.patch_namespaced_pod("mover", ns, {"metadata": {"labels": {"team": "y"}}})
    events = watch_until(
        live.core.list_namespaced_pod,
        ns,
        label_selector="team=x",
        resource_version=start,
        timeout_seconds=3,
        until=lambda seen: seen[-1]["type"] == "DELETED",
    )
    assert ("DELETED", "y") in [
        (e["type"], e["object"].metadata.labels.get("team")) for e in events
    ]
    # Push the history past its bound (2000 in the fixture), then ask for a compacted version.
    live.call(_churn, live, ns)
    with pytest.raises(ApiException) as info:
        for _ in new_watch().stream(
            live.core.list_namespaced_pod, ns, resource_version=start, timeout_seconds=3
        ):
            pass
    assert info.value.status == 410


def _churn(live: LiveServer, ns: str) -> None:
    for i in range(2100):
        live.server.record_event("no-such-uid", "Normal", "Churn", str(i))
        live.server.store.put(
            "configmaps",
            {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "churn", "namespace": ns, "uid": "u"},
                "data": {"i": str(i)},
            },
            created=i == 0,
        )


def test_configmaps_and_patches(live: LiveServer, ns: str) -> None:
    cm = live.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"a": "1"}}
    )
    assert cm.data == {"a": "1"}
    assert live.call(live.server.configmap_data, ns, "cfg") == {"a": "1"}
    cm.data["b"] = "2"
    updated = live.core.replace_namespaced_config_map("cfg", ns, cm)
    assert updated.data == {"a": "1", "b": "2"}
    stale = cm  # carries the old resourceVersion
    with pytest.raises(ApiException) as info:
        live.core.replace_namespaced_config_map("cfg", ns, stale)
    assert info.value.status == 409
    patched = live.core.patch_namespaced_config_map(
        "cfg", ns, [{"op": "add", "path": "/data/c", "value": "3"}]
    )
    assert patched.data["c"] == "3"
    patched = live.core.patch_namespaced_config_map("cfg", ns, {"data": {"a": None}})
    assert "a" not in patched.data
    live.core.delete_namespaced_config_map("cfg", ns)
    assert live.call(live.server.configmap_data, ns, "cfg") is None


def test_namespace_termination(live: LiveServer) -> None:
    live.core.create_namespace({"metadata": {"name": "doomed"}})
    live.core.create_namespaced_pod("doomed", pod_body("a"))
    live.core.create_namespaced_config_map("doomed", {"metadata": {"name": "c"}})
    status, _, terminating = live.request("DELETE", "/api/v1/namespaces/doomed")
    assert status == 200
    assert terminating["status"]["phase"] == "Terminating"
    watch_until(
        live.core.list_namespace,
        field_selector="metadata.name=doomed",
        resource_version=terminating["metadata"]["resourceVersion"],
        timeout_seconds=10,
        until=lambda seen: seen[-1]["type"] == "DELETED",
    )
    assert "doomed" not in {n.metadata.name for n in live.core.list_namespace().items}
    assert live.core.list_namespaced_config_map("doomed").items == []
    with pytest.raises(ApiException) as info:
        live.core.delete_namespace("default")
    assert info.value.status == 403


def test_auth_required(live: LiveServer) -> None:
    configuration = client.Configuration()
    configuration.host = live.server.url
    configuration.api_key = {"authorization": "Bearer wrong"}
    configuration.ssl_ca_cert = str(live.server.ca_path)
    with client.ApiClient(configuration) as other, pytest.raises(ApiException) as info:
        client.CoreV1Api(other).list_namespace()
    assert info.value.status == 401
