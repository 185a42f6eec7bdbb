"""Discovery, Tables, field validation, status subresource, patches and watch details."""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from live_api import LiveServer, pod_body, wait_ready

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@pytest.fixture(scope="module")
def ns(live: LiveServer) -> Iterator[str]:
    name = f"s-{uuid.uuid4().hex[:6]}"
    live.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    live.request("POST", f"/api/v1/namespaces/{name}/pods", pod_body("one", labels={"app": "one"}))
    wait_ready(live, name, "one")
    yield name
    live.request("DELETE", f"/api/v1/namespaces/{name}")


def test_discovery(live: LiveServer) -> None:
    status, _, version = live.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"] == "v1.31.0-netlab"
    assert version["platform"].startswith("linux/")
    assert live.request("GET", "/api")[2]["versions"] == ["v1"]
    resources = {r["name"]: r for r in live.request("GET", "/api/v1")[2]["resources"]}
    assert resources["pods"]["shortNames"] == ["po"]
    assert resources["nodes"]["namespaced"] is False
    assert {"create", "delete", "deletecollection", "watch"} <= set(resources["pods"]["verbs"])
    assert "pods/exec" in resources
    assert live.request("GET", "/apis")[2]["kind"] == "APIGroupList"
    status, _, body = live.request("GET", "/api/v1/secrets")
    assert status == 404
    assert body["reason"] == "NotFound"
    status, _, body = live.request("PUT", "/api/v1/namespaces")
    assert status == 405
    assert body["kind"] == "Status"
    assert live.request("GET", "/healthz", headers={"Authorization": ""})[0] == 200


def test_unauthenticated_is_401_status(live: LiveServer) -> None:
    context = ssl.create_default_context(cafile=str(live.server.ca_path))
    request = urllib.request.Request(live.server.url + "/api/v1/pods")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5, context=context)
    assert info.value.code == 401
    assert json.loads(info.value.read())["reason"] == "Unauthorized"


def test_tables(live: LiveServer, ns: str) -> None:
    status, _, body = live.request(
        "GET", f"/api/v1/namespaces/{ns}/pods", headers={"Accept": TABLE}
    )
    assert status == 200
    assert body["kind"] == "Table"
    assert body["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in body["columnDefinitions"]]
    assert names == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
        "IP",
        "Node",
        "Nominated Node",
        "Readiness Gates",
    ]
    assert [c["priority"] for c in body["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    row = body["rows"][0]
    assert row["cells"][:4] == ["one", "1/1", "Running", "0"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == ns
    _, _, none = live.request(
        "GET", f"/api/v1/namespaces/{ns}/pods?includeObject=None", headers={"Accept": TABLE}
    )
    assert "object" not in none["rows"][0]
    _, _, full = live.request(
        "GET", f"/api/v1/namespaces/{ns}/pods?includeObject=Object", headers={"Accept": TABLE}
    )
    assert full["rows"][0]["object"]["spec"]["containers"][0]["name"] == "main"
    _, _, nodes = live.request("GET", "/api/v1/nodes", headers={"Accept": TABLE})
    assert [c["name"] for c in nodes["columnDefinitions"]][:5] == [
        "Name",
        "Status",
        "Roles",
        "Age",
        "Version",
    ]
    _, _, cms = live.request(
        "GET", f"/api/v1/namespaces/{ns}/configmaps", headers={"Accept": TABLE}
    )
    assert [c["name"] for c in cms["columnDefinitions"]] == ["Name", "Data", "Age"]


def test_field_validation(live: LiveServer, ns: str) -> None:
    body = {"metadata": {"name": "fv"}, "data": {"a": "b"}, "extra": 1}
    status, _, strict = live.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps?fieldValidation=Strict", body
    )
    assert status == 400
    assert strict["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "extra"'
    )
    status, headers, created = live.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps?fieldValidation=Warn", body
    )
    assert status == 201
    assert headers["Warning"] == '299 - "unknown field \\"extra\\""'
    assert "extra" not in created
    status, _, _ = live.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps?fieldValidation=Bogus", body
    )
    assert status == 400


def test_status_subresource_and_patches(live: LiveServer, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/pods/one"
    status, _, patched = live.request(
        "PATCH",
        path + "/status",
        {"status": {"message": "hello"}},
        {"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200
    assert patched["status"]["message"] == "hello"
    assert patched["status"]["phase"] == "Running"
    status, _, smp = live.request(
        "PATCH",
        path,
        {"spec": {"containers": [{"name": "main", "image": "busybox:1.37"}]}},
        {"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert status == 200
    assert smp["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert smp["spec"]["containers"][0]["command"] == ["sleep", "3600"]
    status, _, forbidden = live.request(
        "PATCH",
        path,
        {"spec": {"restartPolicy": "Never"}},
        {"Content-Type": "application/merge-patch+json"},
    )
    assert status == 422
    assert "pod updates may not change fields" in forbidden["message"]
    status, _, jp = live.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}",
        [{"op": "add", "path": "/metadata/labels/team", "value": "net"}],
        {"Content-Type": "application/json-patch+json"},
    )
    assert status == 200
    assert jp["metadata"]["labels"]["team"] == "net"
    status, _, _ = live.request(
        "PATCH", path, {"a": 1}, {"Content-Type": "application/apply-patch+yaml"}
    )
    assert status == 415


def test_watch_bookmarks_and_timeout(live: LiveServer, ns: str) -> None:
    context = ssl.create_default_context(cafile=str(live.server.ca_path))
    query = "watch=1&allowWatchBookmarks=true&timeoutSeconds=2&labelSelector=app%3Done"
    request = urllib.request.Request(f"{live.server.url}/api/v1/namespaces/{ns}/pods?{query}")
    request.add_header("Authorization", f"Bearer {live.server.token}")
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        events = [json.loads(line) for line in response.read().splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "ADDED"
    assert "BOOKMARK" in types
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["kind"] == "Pod"
    assert set(bookmark["object"]["metadata"]) == {"resourceVersion"}


def test_field_validation_directives(live: LiveServer, ns: str) -> None:
    pods = f"/api/v1/namespaces/{ns}/pods"
    body = pod_body("fv-pod")
    body["spec"]["foo"] = 1  # type: ignore[index]
    status, _, strict = live.request("POST", f"{pods}?fieldValidation=Strict", body)
    assert status == 400
    assert strict["reason"] == "BadRequest"
    assert strict["message"].endswith('strict decoding error: unknown field "spec.foo"')
    assert live.request("GET", f"{pods}/fv-pod")[0] == 404, "nothing stored on Strict"
    status, headers, warned = live.request("POST", pods, body)  # no parameter: Warn
    assert status == 201
    assert headers.get_all("Warning") == ['299 - "unknown field \\"spec.foo\\""']
    assert "foo" not in warned["spec"]
    patch = {"spec": {"bar": 2}, "metadata": {"labels": {"x": "y"}}}
    merge = {"Content-Type": "application/merge-patch+json"}
    status, _, strict = live.request("PATCH", f"{pods}/fv-pod?fieldValidation=Strict", patch, merge)
    assert status == 400
    assert 'unknown field "spec.bar"' in strict["message"]
    status, headers, ignored = live.request(
        "PATCH", f"{pods}/fv-pod?fieldValidation=Ignore", patch, merge
    )
    assert status == 200
    assert headers.get_all("Warning") is None
    assert "bar" not in ignored["spec"]
    assert ignored["metadata"]["labels"] == {"x": "y"}
    cm = {"metadata": {"name": "fv-cm"}, "data": {"a": "b"}}
    assert live.request("POST", f"/api/v1/namespaces/{ns}/configmaps", cm)[0] == 201
    cm["metadata"]["bogus"] = True  # type: ignore[index]
    status, _, strict = live.request(
        "PUT", f"/api/v1/namespaces/{ns}/configmaps/fv-cm?fieldValidation=Strict", cm
    )
    assert status == 400
    assert 'unknown field "metadata.bogus"' in strict["message"]
    invalid = {"metadata": {"name": "fv-bad"}, "data": {"a": 1}}
    status, _, answer = live.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps?fieldValidation=Strict", invalid
    )
    assert status == 422, "an invalid value stays 422 Invalid whatever the directive"
    assert answer["reason"] == "Invalid"


def test_boolean_field_selectors_match_unset_as_false(live: LiveServer) -> None:
    """The upstream e2e framework lists schedulable nodes with spec.unschedulable=false; a node
    without the field is selected (the server selects on the Go bool's text)."""
    status, _, body = live.request("GET", "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dfalse")
    assert status == 200
    assert {n["metadata"]["name"] for n in body["items"]} == {"node-1", "node-2", "node-3"}
    status, _, body = live.request("GET", "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dtrue")
    assert body["items"] == []
    status, _, body = live.request("GET", "/api/v1/pods?fieldSelector=spec.hostNetwork%3Dtrue")
    assert status == 200
    assert all(p["spec"].get("hostNetwork") for p in body["items"])
