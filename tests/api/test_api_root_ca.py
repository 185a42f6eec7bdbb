"""kube-root-ca.crt, as kube-controller-manager's root CA publisher keeps it: in every active
namespace, holding the API server's CA (the kubeconfig's) under ``ca.crt`` with its description,
made again when deleted and put back when changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from live_api import LiveServer, until

ROOT_CA = "kube-root-ca.crt"
DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
    "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
    "guaranteed across distributions of Kubernetes clusters."
)


@pytest.fixture
def ns(live: LiveServer) -> Iterator[str]:
    name = f"ca-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": name}})
    yield name
    live.request("DELETE", f"/api/v1/namespaces/{name}")


def _root_ca(live: LiveServer, ns: str) -> Any:
    status, _, body = live.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{ROOT_CA}")
    return body if status == 200 else None


def test_every_namespace_gets_the_api_servers_ca(live: LiveServer, ns: str) -> None:
    published = until(lambda: _root_ca(live, ns), 5, f"{ns}/{ROOT_CA} published")
    assert live.server.ca_pem is not None
    assert published["data"] == {"ca.crt": live.server.ca_pem.decode()}
    assert published["metadata"]["annotations"] == {"kubernetes.io/description": DESCRIPTION}
    for initial in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert _root_ca(live, initial) is not None, initial


def test_deleted_it_comes_back_and_changed_it_is_put_back(live: LiveServer, ns: str) -> None:
    first = until(lambda: _root_ca(live, ns), 5, f"{ns}/{ROOT_CA} published")
    live.core.delete_namespaced_config_map(ROOT_CA, ns)
    again = until(
        lambda: (
            (found := _root_ca(live, ns))
            and found["metadata"]["uid"] != first["metadata"]["uid"]
            and found
        ),
        5,
        f"{ns}/{ROOT_CA} made again after its deletion",
    )
    assert again["data"] == first["data"]
    live.core.patch_namespaced_config_map(
        ROOT_CA, ns, {"data": {"ca.crt": "forged", "extra": "x"}, "metadata": {"annotations": None}}
    )
    restored = until(
        lambda: (found := _root_ca(live, ns)) and found["data"] == first["data"] and found,
        5,
        f"{ns}/{ROOT_CA} put back after a change",
    )
    assert restored["metadata"]["annotations"]["kubernetes.io/description"] == DESCRIPTION


def test_a_terminating_namespace_gets_none(live: LiveServer) -> None:
    name = f"ca-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": name}})
    until(lambda: _root_ca(live, name), 5, f"{name}/{ROOT_CA} published")
    live.core.delete_namespace(name)
    until(
        lambda: live.request("GET", f"/api/v1/namespaces/{name}")[0] == 404,
        10,
        f"namespace {name} gone",
    )
    assert _root_ca(live, name) is None
