"""default/kubernetes, node addresses per family, and list paging (limit/continue) through
the official client and raw requests. Writing Services, EndpointSlices and the rest of the
Service API: test_api_services.py."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from live_api import LiveServer, new_watch, pod_body, wait_ready

from netlab.api.cluster.nodes import node_object
from netlab.api.controllers.bootstrap import kubernetes_service
from netlab.api.errors import ApiError
from netlab.api.paging import decode_continue, encode_continue
from netlab.api.request import Target
from netlab.api.server import ApiServer
from netlab.contract import NodeInfo
from netlab.spec import LabSpec

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


# default/kubernetes
def test_kubernetes_service_through_official_client(live: LiveServer) -> None:
    assert live.core.read_namespace("default").status.phase == "Active"
    svc = live.core.read_namespaced_service("kubernetes", "default")
    assert svc.kind == "Service"
    assert svc.api_version == "v1"
    assert svc.metadata.labels == {"component": "apiserver", "provider": "kubernetes"}
    assert svc.metadata.uid
    assert svc.metadata.resource_version
    assert svc.spec.type == "ClusterIP"
    assert svc.spec.cluster_ip == "10.96.0.1"
    assert svc.spec.cluster_ips == ["10.96.0.1"]
    assert svc.spec.ip_families == ["IPv4"]
    assert svc.spec.ip_family_policy == "SingleStack"
    [port] = svc.spec.ports
    assert (port.name, port.port, port.target_port, port.protocol) == ("https", 443, 6443, "TCP")
    everywhere = live.core.list_service_for_all_namespaces()
    assert ("default", "kubernetes") in [
        (s.metadata.namespace, s.metadata.name) for s in everywhere.items
    ]
    assert [s.metadata.name for s in live.core.list_namespaced_service("default").items] == [
        "kubernetes"
    ]
    assert live.core.list_namespaced_service("kube-system").items == []


def test_service_watch_and_table(live: LiveServer) -> None:
    w = new_watch()
    events = list(w.stream(live.core.list_namespaced_service, "default", timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "kubernetes")]
    status, _, table = live.request(
        "GET", "/api/v1/namespaces/default/services", headers={"Accept": TABLE}
    )
    assert status == 200
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Type",
        "Cluster-IP",
        "External-IP",
        "Port(s)",
        "Age",
        "Selector",
    ]
    cells = table["rows"][0]["cells"]
    assert cells[:5] == ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    assert cells[6] == "<none>"
    resources = {r["name"]: r for r in live.request("GET", "/api/v1")[2]["resources"]}
    assert set(resources["services"]["verbs"]) == {
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    }
    assert resources["services"]["shortNames"] == ["svc"]
    assert resources["services"]["namespaced"] is True
    assert resources["services"]["kind"] == "Service"


@pytest.mark.parametrize(
    ("family", "ips", "families", "policy"),
    [
        pytest.param("ipv4", ["10.96.0.1"], ["IPv4"], "SingleStack", id="ipv4"),
        pytest.param("ipv6", ["fd00:10:96::1"], ["IPv6"], "SingleStack", id="ipv6"),
        # kube-apiserver publishes it single-stack, primary family, also on dual-stack clusters.
        pytest.param("dual", ["10.96.0.1"], ["IPv4"], "SingleStack", id="dual"),
    ],
)
def test_kubernetes_service_per_family(
    tmp_path: Path, family: str, ips: list[str], families: list[str], policy: str
) -> None:
    spec = LabSpec(name="svc", ip_family=family, state_root=tmp_path)
    svc = kubernetes_service(spec)["spec"]
    assert (svc["clusterIP"], svc["clusterIPs"]) == (ips[0], ips)
    assert (svc["ipFamilies"], svc["ipFamilyPolicy"]) == (families, policy)
    server = ApiServer(spec)  # the lab publishes it from the start, in `default`
    stored = server.store.get("services", "default", "kubernetes")
    assert stored is not None
    assert stored["spec"]["clusterIPs"] == ips
    assert server.store.get("namespaces", "", "default") is not None


def test_node_addresses_every_family_primary_first(tmp_path: Path) -> None:
    spec = LabSpec(name="dual", nodes=2, ip_family="dual", state_root=tmp_path)
    plan = spec.node_plans()[1]
    info = NodeInfo(
        name=plan.name,
        internal_ip=plan.internal_ip,
        pod_cidrs=plan.pod_cidrs,
        internal_ips=plan.internal_ips,
    )
    addresses = node_object(info)["status"]["addresses"]
    assert addresses == [
        {"type": "InternalIP", "address": plan.internal_ips[0]},
        {"type": "InternalIP", "address": plan.internal_ips[1]},
        {"type": "Hostname", "address": plan.name},
    ]
    assert ":" not in plan.internal_ips[0]
    assert ":" in plan.internal_ips[1]
    single = NodeInfo(name="n", internal_ip="172.18.0.9", pod_cidrs=("10.244.9.0/24",))
    assert node_object(single)["status"]["addresses"][0] == {
        "type": "InternalIP",
        "address": "172.18.0.9",
    }


def test_a_node_whose_network_is_not_ready_reads_as_kubelet_and_the_controller_write_it() -> None:
    from kubernetes import client

    from conformance.kit.base.settings import Settings
    from conformance.kit.cluster.nodes import NETWORK_NOT_READY, exclusion_of, network_evidence
    from netlab.dataplane.topology import NETWORK_NOT_READY_ERROR

    info = NodeInfo(
        name="node-2",
        internal_ip="172.18.0.3",
        pod_cidrs=("10.244.2.0/24",),
        network_errors=(NETWORK_NOT_READY_ERROR,),
    )
    node = node_object(info)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c["reason"], c["message"]) for c in ready] == [
        ("False", "KubeletNotReady", NETWORK_NOT_READY_ERROR)
    ]
    assert [(t["key"], t["effect"]) for t in node["spec"]["taints"]] == [
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
    ]
    # The suite, reading the object as any client does, names the condition and the taints.
    model = client.ApiClient().deserialize(json.dumps(node), "V1Node", "application/json")
    assert len(network_evidence(model)) == 3
    why = exclusion_of(model, Settings(kubeconfig=None, context=None))
    assert why is not None
    assert why.kind == NETWORK_NOT_READY
    assert "NetworkPluginNotReady" in why.reason
    healthy = node_object(NodeInfo(name="n", internal_ip="172.18.0.9", pod_cidrs=()))
    assert "taints" not in healthy["spec"]


# paging
@pytest.fixture(scope="module")
def paged_ns(live: LiveServer) -> Iterator[str]:
    """A namespace with 7 ready pods, p-0 .. p-6."""
    name = f"pg-{uuid.uuid4().hex[:6]}"
    live.core.create_namespace({"metadata": {"name": name}})
    for i in range(7):
        live.core.create_namespaced_pod(name, pod_body(f"p-{i}"))
    for i in range(7):
        wait_ready(live, name, f"p-{i}")
    yield name
    live.core.delete_namespace(name)


def test_official_client_pages(live: LiveServer, paged_ns: str) -> None:
    names, remaining, token, versions = [], [], None, set()
    for _ in range(10):  # bounded: 7 pods in pages of 3 is 3 pages
        page = live.core.list_namespaced_pod(paged_ns, limit=3, _continue=token)
        names += [p.metadata.name for p in page.items]
        remaining.append(page.metadata.remaining_item_count)
        versions.add(page.metadata.resource_version)
        token = page.metadata.var_continue
        if not token:
            break
    assert names == [f"p-{i}" for i in range(7)], names
    assert remaining == [4, 1, None]
    assert len(versions) == 1, "every page is served at the first page's resourceVersion"
    labelled = live.core.list_namespaced_pod(paged_ns, limit=100)
    assert labelled.metadata.var_continue is None
    assert len(labelled.items) == 7


def test_pages_are_a_consistent_snapshot(live: LiveServer) -> None:
    ns = f"snap-{uuid.uuid4().hex[:6]}"
    live.core.create_namespace({"metadata": {"name": ns}})
    try:
        for name in ("a", "b", "c", "d"):
            live.core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
        first = live.core.list_namespaced_config_map(ns, limit=2)
        assert [c.metadata.name for c in first.items] == ["a", "b"]
        live.core.delete_namespaced_config_map("c", ns)
        live.core.create_namespaced_config_map(ns, {"metadata": {"name": "e"}})
        live.core.patch_namespaced_config_map("d", ns, {"data": {"changed": "yes"}})
        rest = live.core.list_namespaced_config_map(
            ns, limit=10, _continue=first.metadata.var_continue
        )
        # kube-root-ca.crt (the root CA publisher's, in every namespace) sorts after them all.
        assert [c.metadata.name for c in rest.items][:2] == ["c", "d"], "the list as it was"
        assert rest.items[1].data is None
        assert rest.metadata.resource_version == first.metadata.resource_version
        now = live.core.list_namespaced_config_map(ns)
        assert [c.metadata.name for c in now.items] == ["a", "b", "d", "e", "kube-root-ca.crt"]
    finally:
        live.core.delete_namespace(ns)


def test_paging_with_selector_and_across_namespaces(live: LiveServer, paged_ns: str) -> None:
    status, _, page = live.request(
        "GET", f"/api/v1/namespaces/{paged_ns}/pods?limit=2&fieldSelector=metadata.name%21%3Dp-1"
    )
    assert status == 200
    assert [p["metadata"]["name"] for p in page["items"]] == ["p-0", "p-2"]
    assert "remainingItemCount" not in page["metadata"], "a selector makes the count costly"
    assert page["metadata"]["continue"]
    status, _, table = live.request(
        "GET", f"/api/v1/namespaces/{paged_ns}/pods?limit=4", headers={"Accept": TABLE}
    )
    assert [r["cells"][0] for r in table["rows"]] == ["p-0", "p-1", "p-2", "p-3"]
    assert table["metadata"]["remainingItemCount"] == 3
    token = decode_continue(table["metadata"]["continue"])
    assert token.start == "p-3\x00"
    status, _, everywhere = live.request("GET", "/api/v1/pods?limit=1")
    token = decode_continue(everywhere["metadata"]["continue"])
    first = everywhere["items"][0]["metadata"]
    assert token.start == f"{first['namespace']}/{first['name']}\x00"


def _token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("!!!not-base64", id="not-base64"),
        pytest.param(_token([1, 2]), id="not-an-object"),
        pytest.param(base64.urlsafe_b64encode(b"{oops").decode(), id="not-json"),
        pytest.param(_token({"v": "v2", "rv": 5, "start": "a"}), id="unknown-version"),
        pytest.param(_token({"v": "meta.k8s.io/v1", "rv": 0, "start": "a"}), id="rv-0"),
        pytest.param(_token({"v": "meta.k8s.io/v1", "rv": "5", "start": "a"}), id="rv-string"),
        pytest.param(_token({"v": "meta.k8s.io/v1", "rv": 5, "start": ""}), id="empty-start"),
        pytest.param(_token({"v": "meta.k8s.io/v1", "rv": 5, "start": "../x"}), id="traversal"),
    ],
)
def test_malformed_continue_is_400(live: LiveServer, token: str) -> None:
    status, _, body = live.request(
        "GET", f"/api/v1/namespaces/default/pods?limit=1&continue={token}"
    )
    assert status == 400, body
    assert body["reason"] == "BadRequest"
    assert body["message"].startswith("invalid continue token: continue key is not valid")


def test_limit_parameter(live: LiveServer, paged_ns: str) -> None:
    status, _, body = live.request("GET", f"/api/v1/namespaces/{paged_ns}/pods?limit=x")
    assert status == 400
    assert body["reason"] == "BadRequest"
    for limit in ("0", "-3"):  # not a limit, as in the API
        status, _, body = live.request("GET", f"/api/v1/namespaces/{paged_ns}/pods?limit={limit}")
        assert status == 200
        assert len(body["items"]) == 7
        assert "continue" not in body["metadata"]
    token = encode_continue("p-1\x00", 2)
    status, _, body = live.request(
        "GET", f"/api/v1/namespaces/{paged_ns}/pods?continue={token}&resourceVersion=5"
    )
    assert status == 400
    assert body["message"] == "specifying resource version is not allowed when using continue"


def test_expired_continue_is_410(tmp_path: Path) -> None:
    async def scenario() -> tuple[ApiError, list[str]]:
        server = ApiServer(LabSpec(name="exp", state_root=tmp_path), history_limit=5)
        rest = server.rest
        for i in range(4):
            server.store.put(
                "configmaps",
                {"kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "default"}},
                created=True,
            )
        target = Target("configmaps", "default", None)
        first = await rest.list_or_watch(
            make_mocked_request("GET", "/api/v1/namespaces/default/configmaps?limit=2"), target
        )
        assert isinstance(first.body, bytes)
        token = json.loads(first.body)["metadata"]["continue"]
        for i in range(10):  # push the token's version out of the 5-event history
            server.store.put(
                "configmaps",
                {"kind": "ConfigMap", "metadata": {"name": f"z{i}", "namespace": "default"}},
                created=True,
            )
        with pytest.raises(ApiError) as info:
            await rest.list_or_watch(
                make_mocked_request("GET", f"/x?limit=2&continue={token}"), target
            )
        # The answer's own token goes on from the newest state (inconsistently), as the API's does.
        goes_on = info.value.status["metadata"]["continue"]
        rest_page = await rest.list_or_watch(
            make_mocked_request("GET", f"/x?continue={goes_on}"), target
        )
        assert isinstance(rest_page.body, bytes)
        return info.value, [i["metadata"]["name"] for i in json.loads(rest_page.body)["items"]]

    error, remaining = asyncio.run(scenario())
    assert error.code == 410
    assert error.status["reason"] == "Expired"
    assert "too old to display a consistent list result" in error.status["message"]
    assert remaining == ["c2", "c3"] + [f"z{i}" for i in range(10)]
