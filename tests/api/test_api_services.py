"""Services and EndpointSlices through the official client, raw requests and kubectl: create,
read, watch, update, patch, delete; defaults; ClusterIP and NodePort allocation (dryRun, fixed
addresses, deletion frees them); kube-apiserver's 422 texts; dual-stack and IPv6 allocation;
the EndpointSlice controller following pods and readiness; `kubectl expose` and `kubectl get
endpointslices`."""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from live_api import LiveServer, kubectl, new_watch, pod_body, scratch_namespace, until, wait_ready

from netlab.api.errors import ApiError
from netlab.api.resources.services import ServiceRegistry, ip_band, node_port_band
from netlab.api.store import Store
from netlab.spec import LabSpec

SERVICE_RANGE = ipaddress.ip_network("10.96.0.0/12")
KUBECTL = shutil.which("kubectl")


@pytest.fixture
def ns(live: LiveServer) -> Iterator[str]:
    with scratch_namespace(live, "sv") as name:
        yield name


def web(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}], **spec},
    }


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def refused(create: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ApiException) as info:
        create()
    return status_of(info.value)


def discovery(live: LiveServer) -> Any:
    return client.DiscoveryV1Api(live.api_client)


# --- create, defaults, allocation ------------------------------------------------------------


def test_create_defaults_and_allocates_a_cluster_ip(live: LiveServer, ns: str) -> None:
    created = live.core.create_namespaced_service(ns, web())
    spec = created.spec
    assert ipaddress.ip_address(spec.cluster_ip) in SERVICE_RANGE
    assert spec.cluster_ips == [spec.cluster_ip]
    assert (spec.type, spec.session_affinity, spec.internal_traffic_policy) == (
        "ClusterIP",
        "None",
        "Cluster",
    )
    assert (spec.ip_families, spec.ip_family_policy) == (["IPv4"], "SingleStack")
    [port] = spec.ports
    assert (port.protocol, port.port, port.target_port, port.node_port) == ("TCP", 80, 8080, None)
    assert created.status.load_balancer is not None
    read = live.core.read_namespaced_service("web", ns)
    assert read.spec.cluster_ip == spec.cluster_ip
    assert read.metadata.uid == created.metadata.uid
    # The dynamic band: the lowest 256 addresses are left to Services that ask for one.
    assert int(ipaddress.ip_address(spec.cluster_ip)) >= int(SERVICE_RANGE[1]) + 256


def test_fixed_cluster_ip_honoured_then_already_allocated(live: LiveServer, ns: str) -> None:
    live.core.create_namespaced_service(ns, web("first", clusterIP="10.96.0.77"))
    assert live.core.read_namespaced_service("first", ns).spec.cluster_ips == ["10.96.0.77"]
    status = refused(
        lambda: live.core.create_namespaced_service(ns, web("second", clusterIP="10.96.0.77"))
    )
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["message"] == (
        'Service "second" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.77"}: '
        "failed to allocate IP 10.96.0.77: provided IP is already allocated"
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: []string{"10.96.0.77"}: failed to allocate IP '
            "10.96.0.77: provided IP is already allocated",
            "field": "spec.clusterIPs",
        }
    ]
    live.core.delete_namespaced_service("first", ns)
    # Deleting the Service freed its address.
    again = live.core.create_namespaced_service(ns, web("second", clusterIP="10.96.0.77"))
    assert again.spec.cluster_ip == "10.96.0.77"


def test_cluster_ip_outside_the_range_and_malformed(live: LiveServer, ns: str) -> None:
    status = refused(lambda: live.core.create_namespaced_service(ns, web(clusterIP="192.168.7.7")))
    assert status["message"] == (
        'Service "web" is invalid: spec.clusterIPs: Invalid value: []string{"192.168.7.7"}: '
        "failed to allocate IP 192.168.7.7: the provided IP (192.168.7.7) is not in the valid "
        "range. The range of valid IPs is 10.96.0.0/12"
    )
    status = refused(lambda: live.core.create_namespaced_service(ns, web(clusterIP="not-an-ip")))
    assert status["message"] == (
        'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: "not-an-ip": must be a '
        "valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
    )
    assert live.core.list_namespaced_service(ns).items == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"ports": []}, "spec.ports: Required value", id="no-ports"),
        pytest.param(
            {"ports": [{"port": 80}, {"port": 81}]},
            "[spec.ports[0].name: Required value, spec.ports[1].name: Required value]",
            id="unnamed-ports",
        ),
        pytest.param(
            {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
            'spec.ports[1].name: Duplicate value: "a"',
            id="duplicate-names",
        ),
        pytest.param(
            {"ports": [{"port": 70000}]},
            # targetPort defaults to the port, and is checked as well
            "[spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, "
            "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, "
            "inclusive]",
            id="port-range",
        ),
        pytest.param(
            {"type": "Foo"},
            'spec.type: Unsupported value: "Foo": supported values: "ClusterIP", '
            '"ExternalName", "LoadBalancer", "NodePort"',
            id="type",
        ),
        pytest.param(
            {"ports": [{"port": 80, "protocol": "XTP"}]},
            'spec.ports[0].protocol: Unsupported value: "XTP": supported values: "SCTP", '
            '"TCP", "UDP"',
            id="protocol",
        ),
        pytest.param(
            {"ports": [{"port": 80, "nodePort": 30080}]},
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            id="nodeport-on-clusterip",
        ),
        pytest.param(
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]},
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid "
            "range. The range of valid ports is 30000-32767",
            id="nodeport-range",
        ),
        pytest.param(
            {"ipFamilyPolicy": "RequireDualStack"},
            'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not '
            "configured for dual-stack services",
            id="dual-stack-on-ipv4",
        ),
        pytest.param(
            {"ipFamilies": ["IPv6"]},
            'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster',
            id="ipv6-on-ipv4",
        ),
        pytest.param(
            {"type": "ExternalName"},
            "spec.externalName: Required value",
            id="external-name",
        ),
    ],
)
def test_validation_messages(live: LiveServer, ns: str, spec: dict[str, Any], message: str) -> None:
    body = {"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 80}], **spec}}
    status, _, answer = live.request("POST", f"/api/v1/namespaces/{ns}/services", body)
    assert status == 422, answer
    assert answer["reason"] == "Invalid"
    assert answer["message"] == f'Service "bad" is invalid: {message}'
    assert live.core.list_namespaced_service(ns).items == []


def test_dry_run_allocates_nothing_and_gives_the_same_errors(live: LiveServer, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/services?dryRun=All"
    status, _, answer = live.request("POST", path, web(type="NodePort", clusterIP="10.96.0.88"))
    assert status == 201, answer
    assert answer["spec"]["clusterIP"] == "10.96.0.88"
    assert 30000 <= answer["spec"]["ports"][0]["nodePort"] <= 32767
    assert live.core.list_namespaced_service(ns).items == []
    kept = live.core.create_namespaced_service(ns, web(clusterIP="10.96.0.88"))
    assert kept.spec.cluster_ip == "10.96.0.88"  # the dry run held nothing
    status, _, answer = live.request("POST", path, web("other", clusterIP="10.96.0.88"))
    assert status == 422
    assert "provided IP is already allocated" in answer["message"]


def test_node_ports_allocated_kept_freed(live: LiveServer, ns: str) -> None:
    body = web(type="NodePort")
    body["spec"]["ports"] = [
        {"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"name": "udp", "port": 81, "targetPort": 8081, "protocol": "UDP"},
    ]
    created = live.core.create_namespaced_service(ns, body)
    node_ports = [p.node_port for p in created.spec.ports]
    assert all(30000 <= n <= 32767 for n in node_ports)
    assert len(set(node_ports)) == 2
    assert created.spec.external_traffic_policy == "Cluster"
    status = refused(
        lambda: live.core.create_namespaced_service(
            ns,
            web("clash", type="NodePort", ports=[{"port": 80, "nodePort": node_ports[0]}]),
        )
    )
    assert status["message"] == (
        f'Service "clash" is invalid: spec.ports[0].nodePort: Invalid value: {node_ports[0]}: '
        "provided port is already allocated"
    )
    # An update that leaves nodePorts out keeps them (patchAllocatedValues).
    replaced = live.core.replace_namespaced_service(
        "web", ns, {**body, "metadata": {"name": "web"}}
    )
    assert [p.node_port for p in replaced.spec.ports] == node_ports
    assert replaced.spec.cluster_ip == created.spec.cluster_ip
    # Back to ClusterIP releases them; another Service may take one.
    patched = live.core.patch_namespaced_service("web", ns, {"spec": {"type": "ClusterIP"}})
    assert [p.node_port for p in patched.spec.ports] == [None, None]
    taken = live.core.create_namespaced_service(
        ns, web("taker", type="NodePort", ports=[{"port": 80, "nodePort": node_ports[0]}])
    )
    assert taken.spec.ports[0].node_port == node_ports[0]


def test_cluster_ip_may_not_change(live: LiveServer, ns: str) -> None:
    created = live.core.create_namespaced_service(ns, web())
    status = refused(
        lambda: live.core.patch_namespaced_service(
            "web", ns, {"spec": {"clusterIP": "10.96.0.99", "clusterIPs": ["10.96.0.99"]}}
        )
    )
    assert status["message"] == (
        'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.96.0.99"}: '
        "may not change once set"
    )
    assert live.core.read_namespaced_service("web", ns).spec.cluster_ip == created.spec.cluster_ip


def test_headless_and_external_name(live: LiveServer, ns: str) -> None:
    headless = live.core.create_namespaced_service(ns, web("db", clusterIP="None"))
    assert (headless.spec.cluster_ip, headless.spec.cluster_ips) == ("None", ["None"])
    assert headless.spec.ip_families == ["IPv4"]
    external = live.core.create_namespaced_service(
        ns, {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "x.io"}}
    )
    assert external.spec.cluster_ip is None
    assert external.spec.ip_families is None


def test_watch_update_delete_and_table(live: LiveServer, ns: str) -> None:
    listed = live.core.list_namespaced_service(ns)
    live.core.create_namespaced_service(ns, web())
    live.core.patch_namespaced_service("web", ns, {"metadata": {"labels": {"tier": "front"}}})
    live.core.delete_namespaced_service("web", ns)
    events = [
        (e["type"], e["object"].metadata.name)
        for e in new_watch().stream(
            live.core.list_namespaced_service,
            ns,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    ]
    assert events == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    live.core.create_namespaced_service(ns, web(type="NodePort"))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    status, _, table = live.request(
        "GET", f"/api/v1/namespaces/{ns}/services", headers={"Accept": accept}
    )
    assert status == 200
    [row] = table["rows"]
    node_port = live.core.read_namespaced_service("web", ns).spec.ports[0].node_port
    assert row["cells"][1] == "NodePort"
    assert row["cells"][4] == f"80:{node_port}/TCP"
    assert row["cells"][6] == "app=web"


# --- EndpointSlices --------------------------------------------------------------------------


def _slices(live: LiveServer, ns: str, service: str) -> list[Any]:
    found: list[Any] = (
        discovery(live)
        .list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={service}")
        .items
    )
    return found


def _endpoints(live: LiveServer, ns: str, service: str) -> dict[str, bool]:
    """pod name -> ready, across the Service's slices."""
    return {
        e.target_ref.name: bool(e.conditions.ready)
        for s in _slices(live, ns, service)
        for e in s.endpoints or []
    }


def test_endpoint_slices_follow_pods_and_readiness(live: LiveServer, ns: str) -> None:
    live.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )
    [placeholder] = until(lambda: _slices(live, ns, "web"), 5, "the placeholder slice")
    assert placeholder.endpoints is None or placeholder.endpoints == []
    assert placeholder.address_type == "IPv4"
    for name in ("a", "b"):
        body = pod_body(name, labels={"app": "web"})
        body["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
        live.core.create_namespaced_pod(ns, body)
        wait_ready(live, ns, name)
    until(lambda: _endpoints(live, ns, "web") == {"a": True, "b": True}, 5, "both endpoints")
    [endpoint_slice] = _slices(live, ns, "web")
    labels = endpoint_slice.metadata.labels
    assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert labels["tier"] == "front"
    [owner] = endpoint_slice.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller) == ("Service", "web", True)
    assert [(p.name, p.port, p.protocol) for p in endpoint_slice.ports] == [("http", 8080, "TCP")]
    pod_a = live.core.read_namespaced_pod("a", ns)
    endpoint = next(e for e in endpoint_slice.endpoints if e.target_ref.name == "a")
    assert endpoint.addresses == [pod_a.status.pod_ip]
    assert endpoint.node_name == pod_a.spec.node_name
    assert (endpoint.target_ref.kind, endpoint.target_ref.uid) == ("Pod", pod_a.metadata.uid)
    assert (endpoint.conditions.serving, endpoint.conditions.terminating) == (True, False)
    # The kubelet reports a unready pod: its endpoint is ready: false.
    unready = pod_a.status.to_dict()
    status = {
        "phase": "Running",
        "podIP": unready["pod_ip"],
        "podIPs": [{"ip": unready["pod_ip"]}],
        "conditions": [{"type": "Ready", "status": "False"}],
    }
    live.call(live.server.pod_status_changed, pod_a.metadata.uid, status)
    until(lambda: _endpoints(live, ns, "web") == {"a": False, "b": True}, 2, "a ready: false")
    live.core.delete_namespaced_pod("b", ns, grace_period_seconds=0)
    until(lambda: _endpoints(live, ns, "web") == {"a": False}, 5, "b gone from the slice")
    live.core.delete_namespaced_service("web", ns)
    until(lambda: not _slices(live, ns, "web"), 5, "the slices deleted with the Service")


def test_endpoint_slice_api_surface(live: LiveServer, ns: str) -> None:
    groups = live.request("GET", "/apis")[2]
    assert {
        "name": "discovery.k8s.io",
        "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
    } in groups["groups"]
    resources = live.request("GET", "/apis/discovery.k8s.io/v1")[2]
    assert resources["groupVersion"] == "discovery.k8s.io/v1"
    [entry] = resources["resources"]
    assert (entry["name"], entry["kind"], entry["namespaced"]) == (
        "endpointslices",
        "EndpointSlice",
        True,
    )
    assert live.request("GET", "/api/v1/endpointslices")[0] == 404
    # A slice made by hand (for a Service without a selector) is kept as it is.
    manual = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "manual",
            "labels": {
                "kubernetes.io/service-name": "ext",
                "endpointslice.kubernetes.io/managed-by": "me",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.9.9"]}],
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
    }
    created = discovery(live).create_namespaced_endpoint_slice(ns, manual)
    assert created.api_version == "discovery.k8s.io/v1"
    listing = live.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")[2]
    assert listing["kind"] == "EndpointSliceList"
    assert listing["apiVersion"] == "discovery.k8s.io/v1"
    status, _, answer = live.request(
        "POST",
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        {**manual, "metadata": {"name": "bad"}, "addressType": 4},
    )
    assert status == 422, answer
    assert "addressType" in answer["message"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_expose_and_get_endpointslices(live: LiveServer, ns: str) -> None:
    body = pod_body("demo", labels={"run": "demo"})
    live.core.create_namespaced_pod(ns, body)
    wait_ready(live, ns, "demo")
    exposed = kubectl(
        live, "expose", "pod", "demo", "-n", ns, "--port", "80", "--target-port", "8080"
    )
    assert exposed.stdout.strip() == "service/demo exposed"
    svc = live.core.read_namespaced_service("demo", ns)
    assert svc.spec.selector == {"run": "demo"}
    assert [(p.port, p.target_port) for p in svc.spec.ports] == [(80, 8080)]
    ip = live.core.read_namespaced_pod("demo", ns).status.pod_ip
    until(lambda: _endpoints(live, ns, "demo") == {"demo": True}, 5, "the demo endpoint")
    lines = kubectl(live, "get", "endpointslices", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    row = lines[1].split()
    assert row[0].startswith("demo-")
    assert row[1:4] == ["IPv4", "8080", ip]
    shown = kubectl(live, "get", "svc", "demo", "-n", ns, "-o", "wide").stdout.splitlines()
    assert shown[1].split()[:5] == ["demo", "ClusterIP", svc.spec.cluster_ip, "<none>", "80/TCP"]
    kubectl(live, "delete", "svc", "demo", "-n", ns)
    until(lambda: not _slices(live, ns, "demo"), 5, "the slice deleted")


# --- allocation on dual-stack and IPv6 clusters (no server needed) ---------------------------


def registry(ip_family: str, tmp_path: Path) -> ServiceRegistry:
    spec = LabSpec(name="svc", ip_family=ip_family, state_root=tmp_path)
    return ServiceRegistry(Store(), spec, random.Random(7))


def stored(reg: ServiceRegistry, body: dict[str, Any]) -> dict[str, Any]:
    body = {**body, "metadata": {**body["metadata"], "namespace": "default"}}
    service = reg.create(body)
    return reg.store.put("services", service, created=True)


@pytest.mark.parametrize(
    ("policy", "families"),
    [
        pytest.param(None, ["IPv4"], id="default-single"),
        pytest.param("PreferDualStack", ["IPv4", "IPv6"], id="prefer"),
        pytest.param("RequireDualStack", ["IPv4", "IPv6"], id="require"),
    ],
)
def test_dual_stack_allocation(tmp_path: Path, policy: str | None, families: list[str]) -> None:
    reg = registry("dual", tmp_path)
    spec = {"ipFamilyPolicy": policy} if policy else {}
    created = stored(reg, web(**spec))["spec"]
    assert created["ipFamilies"] == families
    assert [f"IPv{ipaddress.ip_address(ip).version}" for ip in created["clusterIPs"]] == families
    assert created["clusterIP"] == created["clusterIPs"][0]
    v6 = stored(reg, web("six", ipFamilies=["IPv6"]))["spec"]
    assert ipaddress.ip_address(v6["clusterIP"]) in ipaddress.ip_network("fd00:10:96::/112")


def test_ipv6_cluster_refuses_ipv4_and_allocates_v6(tmp_path: Path) -> None:
    reg = registry("ipv6", tmp_path)
    created = stored(reg, web())["spec"]
    assert created["ipFamilies"] == ["IPv6"]
    assert ipaddress.ip_address(created["clusterIP"]) in ipaddress.ip_network("fd00:10:96::/112")
    with pytest.raises(ApiError) as info:
        reg.create({**web("v4", clusterIP="10.96.0.5"), "metadata": {"name": "v4"}})
    assert info.value.status["message"] == (
        'Service "v4" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.96.0.5"}: '
        "IPv4 is not configured on this cluster"
    )
    fixed = stored(reg, web("dns", clusterIP="fd00:10:96::a"))["spec"]
    assert fixed["clusterIPs"] == ["fd00:10:96::a"]


def test_bands_leave_the_low_addresses_and_ports_to_fixed_requests() -> None:
    band = ip_band(ipaddress.ip_network("10.96.0.0/12"))
    assert (band.first, band.static_size) == (int(ipaddress.ip_address("10.96.0.1")), 256)
    rng = random.Random(1)
    first_ten = [next(iter(band.candidates(rng))) for _ in range(10)]
    assert all(value >= band.first + 256 for value in first_ten)
    ports = node_port_band()
    assert (ports.first, ports.last, ports.static_size) == (30000, 32767, 86)
    assert sorted(ports.candidates(random.Random(2))) == list(range(30000, 32768))


def test_deleted_kubernetes_service_comes_back(live: LiveServer) -> None:
    """As kube-apiserver's bootstrap controller repairs it: same address, new object."""
    before = live.core.read_namespaced_service("kubernetes", "default")
    live.core.delete_namespaced_service("kubernetes", "default")

    def back() -> Any:
        listed = live.core.list_namespaced_service(
            "default", field_selector="metadata.name=kubernetes"
        )
        return listed.items[0] if listed.items else None

    again = until(back, 5, "default/kubernetes back")
    assert again.spec.cluster_ip == before.spec.cluster_ip
    assert again.metadata.uid != before.metadata.uid


def test_openapi_and_group_documents(live: LiveServer) -> None:
    root = live.request("GET", "/openapi/v3")[2]["paths"]
    assert {"api/v1", "apis/discovery.k8s.io/v1"} <= set(root)
    group = live.request("GET", "/apis/discovery.k8s.io")[2]
    assert (group["kind"], group["name"]) == ("APIGroup", "discovery.k8s.io")
    document = live.request("GET", "/openapi/v3/apis/discovery.k8s.io/v1")[2]
    [path] = document["paths"]
    assert path == "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}"
