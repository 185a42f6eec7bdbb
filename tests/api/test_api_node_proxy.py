"""nodes/proxy to the lab's kubelets, as the upstream e2e framework reads them: ``/pods`` lists
the pods bound to the node as a PodList, ``/healthz`` is ok, other paths are kubelet's 404, another
port is the 503 of a node that cannot be reached, an unknown node is 404."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from live_api import LiveServer, pod_body, wait_ready


@pytest.fixture(scope="module")
def ns(live: LiveServer) -> Iterator[str]:
    name = f"np-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": name}})
    live.core.create_namespaced_pod(name, pod_body("on-node-2", nodeName="node-2"))
    wait_ready(live, name, "on-node-2")
    yield name
    live.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.mark.parametrize("node", ["node-2", "node-2:10250", "https:node-2:10250"])
def test_pods_lists_what_the_kubelet_runs(live: LiveServer, ns: str, node: str) -> None:
    status, headers, body = live.request("GET", f"/api/v1/nodes/{node}/proxy/pods")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["kind"] == "PodList"
    assert body["apiVersion"] == "v1"
    places = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in body["items"]}
    assert (ns, "on-node-2") in places
    assert all(p["spec"]["nodeName"] == "node-2" for p in body["items"])
    status, _, body = live.request("GET", "/api/v1/nodes/node-1/proxy/pods")
    assert (ns, "on-node-2") not in {
        (p["metadata"]["namespace"], p["metadata"]["name"]) for p in body["items"]
    }


def test_other_kubelet_paths_ports_and_nodes(live: LiveServer) -> None:
    assert live.request("GET", "/api/v1/nodes/node-1/proxy/healthz")[2] == b"ok"
    status, headers, body = live.request("GET", "/api/v1/nodes/node-1/proxy/stats/nothing")
    assert (status, body) == (404, b"404 page not found\n")
    assert headers["Content-Type"].startswith("text/plain")
    status, _, body = live.request("GET", "/api/v1/nodes/node-1:9999/proxy/pods")
    assert status == 503
    assert body["message"].startswith("error trying to reach service: dial tcp ")
    assert body["message"].endswith(":9999: connect: connection refused")
    status, _, body = live.request("GET", "/api/v1/nodes/node-9/proxy/pods")
    assert status == 404
    assert body["message"] == 'nodes "node-9" not found'


def test_discovery_names_the_subresource(live: LiveServer) -> None:
    resources = {r["name"]: r for r in live.request("GET", "/api/v1")[2]["resources"]}
    assert resources["nodes/proxy"]["kind"] == "NodeProxyOptions"
    assert set(resources["nodes/proxy"]["verbs"]) == {"create", "delete", "get", "patch", "update"}
