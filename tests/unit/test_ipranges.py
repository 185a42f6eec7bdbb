"""`conformance.kit.cluster.ipranges`: each source of the service range and of per-node pod ranges, read
from objects as clusters serve them (recorded shapes), the order the sources are asked in, and
what a source that does not answer says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster import ipranges
from conformance.kit.cluster.cidrs import CIDRParseError, NodeCIDRs

QUICK = Timeouts(api_retry=0.5)

# --- recorded objects ----------------------------------------------------------------------------

# `kubectl get servicecidrs -o json` on a dual-stack 1.33 cluster (kube-apiserver's default one).
SERVICECIDR = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "kubernetes", "resourceVersion": "187", "uid": "c0ffee"},
    "spec": {"cidrs": ["10.96.0.0/12", "fd00:10:96::/112"]},
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": ""}]},
}
# A second ServiceCIDR being removed: its range no longer counts.
SERVICECIDR_DELETING = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "extra", "deletionTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"cidrs": ["10.250.0.0/24"]},
}

# kube-system/kubeadm-config of a kubeadm v1.28 cluster (data as kubeadm writes it).
KUBEADM_CONFIG = {
    "ClusterConfiguration": """apiServer:
  extraArgs:
    authorization-mode: Node,RBAC
  timeoutForControlPlane: 4m0s
apiVersion: kubeadm.k8s.io/v1beta3
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controllerManager: {}
dns: {}
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: v1.28.15
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.112.0.0/16
scheduler: {}
"""
}
KUBEADM_CONFIG_DUAL = {
    "ClusterConfiguration": "kind: ClusterConfiguration\nnetworking:\n"
    "  serviceSubnet: 10.96.0.0/16,fd00:10:96::/112\n"
}


def apiserver_pod(*command: str, args: tuple[str, ...] = ()) -> client.V1Pod:
    """kube-system/kube-apiserver-cp-1 as kubeadm's static pod shows it."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="kube-apiserver-cp-1",
            namespace="kube-system",
            labels={"component": "kube-apiserver", "tier": "control-plane"},
        ),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="kube-apiserver",
                    image="registry.k8s.io/kube-apiserver:v1.28.15",
                    command=list(command),
                    args=list(args) or None,
                )
            ]
        ),
    )


KUBEADM_APISERVER_COMMAND = (
    "kube-apiserver",
    "--advertise-address=172.18.0.2",
    "--allow-privileged=true",
    "--authorization-mode=Node,RBAC",
    "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    "--enable-admission-plugins=NodeRestriction",
    "--etcd-servers=https://127.0.0.1:2379",
    "--secure-port=6443",
    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
    "--service-cluster-ip-range=10.112.0.0/16",
    "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
)

# kube-apiserver's 422 for a dry-run Service asking for 192.0.2.1 on a 10.96.0.0/12 cluster.
REFUSAL_STATUS = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'Service "netconform-service-range-probe" is invalid: spec.clusterIPs: Invalid '
    'value: []string{"192.0.2.1"}: failed to allocate IP 192.0.2.1: the provided IP '
    "(192.0.2.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12",
    "reason": "Invalid",
    "details": {
        "name": "netconform-service-range-probe",
        "kind": "Service",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: []string{"192.0.2.1"}: failed to allocate IP '
                "192.0.2.1: the provided IP (192.0.2.1) is not in the valid range. The range "
                "of valid IPs is 10.96.0.0/12",
                "field": "spec.clusterIPs",
            }
        ],
    },
    "code": 422,
}
# Before 1.24 the allocator worded it without the address in parentheses.
OLD_REFUSAL = (
    'The Service "x" is invalid: spec.clusterIPs: Invalid value: []string{"192.0.2.1"}: failed '
    "to allocated ip:192.0.2.1 with error:provided IP is not in the valid range. The range of "
    "valid IPs is 10.43.0.0/16"
)

# `kubectl get ciliumnodes -o json` items: cluster-pool IPAM, multi-pool IPAM, ENI (no CIDR).
CILIUM_NODES = [
    {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": "worker-1", "ownerReferences": [{"kind": "Node", "name": "worker-1"}]},
        "spec": {
            "addresses": [{"ip": "172.18.0.3", "type": "InternalIP"}],
            "ipam": {"podCIDRs": ["10.0.1.0/24", "fd00:10:0:1::/64"]},
        },
        "status": {"ipam": {"operator-status": {}}},
    },
    {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": "worker-2"},
        "spec": {
            "ipam": {
                "pools": {
                    "allocated": [
                        {"pool": "default", "cidrs": ["10.10.2.0/27", "10.10.2.32/27"]},
                        {"pool": "jupiter", "cidrs": ["192.168.7.0/27"]},
                    ],
                    "requested": [{"pool": "default", "needed": {"ipv4-addrs": 16}}],
                }
            }
        },
    },
    {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": "eni-node"},
        "spec": {"ipam": {"pool": {"10.20.0.7": {"resource": "eni-0abc"}}}, "eni": {}},
    },
]

# `kubectl get blockaffinities.crd.projectcalico.org -o json` items (Calico v3.27).
BLOCK_AFFINITIES = [
    {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {"name": "worker-1-192-168-10-0-26"},
        "spec": {
            "cidr": "192.168.10.0/26",
            "deleted": "false",
            "node": "worker-1",
            "state": "confirmed",
            "type": "host",
        },
    },
    {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {"name": "worker-1-192-168-10-64-26"},
        "spec": {
            "cidr": "192.168.10.64/26",
            "deleted": "false",
            "node": "worker-1",
            "state": "confirmed",
        },
    },
    {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {"name": "worker-2-192-168-20-0-26"},
        "spec": {
            "cidr": "192.168.20.0/26",
            "deleted": "false",
            "node": "worker-2",
            "state": "pending",
        },
    },
    {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {"name": "worker-2-192-168-20-64-26"},
        "spec": {
            "cidr": "192.168.20.64/26",
            "deleted": "true",
            "node": "worker-2",
            "state": "confirmed",
        },
    },
    {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {"name": "worker-2-fd00-10-244-1-0-122"},
        "spec": {
            "cidr": "fd00:10:244:1::/122",
            "deleted": "false",
            "node": "worker-2",
            "state": "confirmed",
        },
    },
]


# --- parsing ---------------------------------------------------------------------------------


def test_servicecidr_objects() -> None:
    cidrs = ipranges.service_cidrs_from_servicecidr_objects([SERVICECIDR, SERVICECIDR_DELETING])
    assert cidrs == ("10.96.0.0/12", "fd00:10:96::/112")


def test_kubeadm_config() -> None:
    assert ipranges.service_cidrs_from_kubeadm_config(KUBEADM_CONFIG) == ("10.112.0.0/16",)
    assert ipranges.service_cidrs_from_kubeadm_config(KUBEADM_CONFIG_DUAL) == (
        "10.96.0.0/16",
        "fd00:10:96::/112",
    )
    assert ipranges.service_cidrs_from_kubeadm_config({"ClusterConfiguration": "dns: {}"}) == ()
    assert ipranges.service_cidrs_from_kubeadm_config({}) == ()


def test_apiserver_flag_in_either_spelling() -> None:
    assert ipranges.service_cidrs_from_apiserver_pod(apiserver_pod(*KUBEADM_APISERVER_COMMAND)) == (
        "10.112.0.0/16",
    )
    split = apiserver_pod(
        "/usr/local/bin/kube-apiserver",
        args=("--service-cluster-ip-range", "10.0.0.0/16,fd00::/108"),
    )
    assert ipranges.service_cidrs_from_apiserver_pod(split) == ("10.0.0.0/16", "fd00::/108")
    assert ipranges.service_cidrs_from_apiserver_pod(apiserver_pod("kube-apiserver")) == ()
    with pytest.raises(CIDRParseError):
        ipranges.service_cidrs_from_apiserver_pod(
            apiserver_pod("kube-apiserver", "--service-cluster-ip-range=ten.0.0.0/8")
        )


def test_refusal_names_the_range() -> None:
    assert ipranges.service_cidr_from_refusal(REFUSAL_STATUS["message"]) == "10.96.0.0/12"  # type: ignore[arg-type]
    assert ipranges.service_cidr_from_refusal(OLD_REFUSAL) == "10.43.0.0/16"
    v6 = "... not in the valid range. The range of valid IPs is fd00:10:96::/112"
    assert ipranges.service_cidr_from_refusal(v6) == "fd00:10:96::/112"
    assert ipranges.service_cidr_from_refusal("IPv6 is not configured on this cluster") is None


def test_cilium_nodes() -> None:
    assert ipranges.pod_ranges_from_cilium_nodes(CILIUM_NODES) == {
        "worker-1": ("10.0.1.0/24", "fd00:10:0:1::/64"),
        "worker-2": ("10.10.2.0/27", "10.10.2.32/27", "192.168.7.0/27"),
    }


def test_calico_block_affinities() -> None:
    assert ipranges.pod_ranges_from_block_affinities(BLOCK_AFFINITIES) == {
        "worker-1": ("192.168.10.0/26", "192.168.10.64/26"),
        "worker-2": ("fd00:10:244:1::/122",),
    }


# --- asking, in order --------------------------------------------------------------------------


class FakeCluster:
    """The handful of API calls the sources make, answered from recorded objects (or errors)."""

    def __init__(
        self,
        *,
        custom: dict[tuple[str, str, str], Any] | None = None,
        config_map: dict[str, str] | BaseException | None = None,
        apiserver_pods: list[client.V1Pod] | None = None,
        dry_run: BaseException | None = None,
    ) -> None:
        self.custom = custom or {}
        self.config_map = config_map
        self.apiserver_pods = apiserver_pods or []
        self.dry_run = dry_run
        self.asked: list[str] = []

    # CustomObjectsApi
    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, **_: Any
    ) -> dict[str, Any]:
        self.asked.append(f"list {plural}.{group}/{version}")
        found = self.custom.get((group, version, plural))
        if found is None:
            raise ApiException(status=404, reason="Not Found")
        if isinstance(found, BaseException):
            raise found
        return {"items": found}

    # CoreV1Api
    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> Any:
        self.asked.append(f"read configmap {namespace}/{name}")
        if self.config_map is None:
            raise ApiException(status=404, reason="Not Found")
        if isinstance(self.config_map, BaseException):
            raise self.config_map
        return client.V1ConfigMap(data=self.config_map)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> client.V1PodList:
        self.asked.append(f"list pods {namespace} {kwargs.get('label_selector')}")
        return client.V1PodList(items=self.apiserver_pods)

    def create_namespaced_service(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        spec = body.spec
        self.asked.append(f"create service {namespace} {spec.cluster_ip} {kwargs.get('dry_run')}")
        if self.dry_run is not None:
            raise self.dry_run
        return body


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hands out a `FakeCluster` as both the CoreV1Api and the CustomObjectsApi of ipranges."""
    holder: dict[str, FakeCluster] = {}

    def install(fake: FakeCluster) -> FakeCluster:
        holder["fake"] = fake
        monkeypatch.setattr(ipranges.client, "CoreV1Api", lambda _api=None: holder["fake"])
        monkeypatch.setattr(ipranges.client, "CustomObjectsApi", lambda _api=None: holder["fake"])
        return fake

    return install


def refusal(status: int, body: dict[str, Any]) -> ApiException:
    exc = ApiException(status=status, reason="Unprocessable Entity")
    exc.body = json.dumps(body)
    return exc


def finder() -> ipranges.ServiceRangeFinder:
    return ipranges.ServiceRangeFinder(None, "netconform-run-1", QUICK)  # type: ignore[arg-type]


def test_servicecidr_objects_come_first(cluster: Any) -> None:
    fake = cluster(
        FakeCluster(
            custom={("networking.k8s.io", "v1", "servicecidrs"): [SERVICECIDR]},
            config_map=KUBEADM_CONFIG,
        )
    )
    found = finder().range_of(6)
    assert found.cidrs == ("fd00:10:96::/112",)
    assert found.source == "ServiceCIDR objects (v1: kubernetes)"
    assert fake.asked == ["list servicecidrs.networking.k8s.io/v1"]


def test_kubeadm_config_before_1_33(cluster: Any) -> None:
    fake = cluster(FakeCluster(config_map=KUBEADM_CONFIG))
    search = finder()
    found = search.range_of(4)
    assert (found.cidrs, found.source) == (("10.112.0.0/16",), ipranges.SOURCE_KUBEADM)
    assert [a.missing for a in found.tried] == ["not served by this cluster (HTTP 404)"]
    asked = len(fake.asked)
    search.range_of(4)
    assert len(fake.asked) == asked  # each source is asked once per finder


def test_apiserver_pod_when_not_kubeadm(cluster: Any) -> None:
    fake = cluster(FakeCluster(apiserver_pods=[apiserver_pod(*KUBEADM_APISERVER_COMMAND)]))
    found = finder().range_of(4)
    assert found.cidrs == ("10.112.0.0/16",)
    assert found.source == (
        "the kube-apiserver pod's --service-cluster-ip-range (pod kube-system/kube-apiserver-cp-1)"
    )
    assert "list pods kube-system component=kube-apiserver" in fake.asked
    assert found.tried[1].missing == "no such ConfigMap (not a kubeadm cluster)"


def test_dry_run_service_on_a_managed_control_plane(cluster: Any) -> None:
    fake = cluster(FakeCluster(dry_run=refusal(422, REFUSAL_STATUS)))
    found = finder().range_of(4)
    assert found.cidrs == ("10.96.0.0/12",)
    assert found.source == f"{ipranges.SOURCE_DRY_RUN} (ClusterIP 192.0.2.1)"
    assert fake.asked[-1] == "create service netconform-run-1 192.0.2.1 All"
    assert "no pod labelled component=kube-apiserver" in (found.tried[2].missing or "")


def test_no_source_answers_and_each_says_why(cluster: Any) -> None:
    not_allowed = refusal(405, {"kind": "Status", "code": 405, "message": "not allowed"})
    forbidden = ApiException(status=403, reason="Forbidden")
    cluster(FakeCluster(config_map=forbidden, dry_run=not_allowed))
    found = finder().range_of(6)
    assert found.source is None
    assert found.cidrs == ()
    why = found.why_unknown()
    assert "ServiceCIDR objects: not served by this cluster (HTTP 404)" in why
    assert "kubeadm-config (networking.serviceSubnet): no answer:" in why
    assert "HTTP 403" in why
    assert "does not create Services (HTTP 405)" in why
    assert why.count(";") == 3


def test_a_family_the_first_source_lacks_is_asked_further(cluster: Any) -> None:
    v6_refusal = {
        **REFUSAL_STATUS,
        "message": "... The range of valid IPs is fd00:10:96::/112",
    }
    fake = cluster(FakeCluster(config_map=KUBEADM_CONFIG, dry_run=refusal(422, v6_refusal)))
    search = finder()
    assert search.range_of(4).source == ipranges.SOURCE_KUBEADM
    found = search.range_of(6)
    assert found.cidrs == ("fd00:10:96::/112",)
    assert fake.asked[-1] == "create service netconform-run-1 2001:db8::1 All"
    assert found.tried[1].missing is None  # kubeadm answered, but for IPv4 only


def test_pod_ranges_cilium_first(cluster: Any) -> None:
    cluster(FakeCluster(custom={("cilium.io", "v2", "ciliumnodes"): CILIUM_NODES}))
    found = ipranges.find_node_pod_ranges(None, [NodeCIDRs("worker-1", ("10.244.0.0/24",))], QUICK)  # type: ignore[arg-type]
    assert found.source == ipranges.SOURCE_CILIUM
    assert found.ranges["worker-1"] == ("10.0.1.0/24", "fd00:10:0:1::/64")
    assert not found.borrows


def test_pod_ranges_calico_blocks(cluster: Any) -> None:
    cluster(
        FakeCluster(custom={("crd.projectcalico.org", "v1", "blockaffinities"): BLOCK_AFFINITIES})
    )
    found = ipranges.find_node_pod_ranges(None, [], QUICK)  # type: ignore[arg-type]
    assert found.source == ipranges.SOURCE_CALICO
    assert found.borrows
    assert [n.node for n in found.nodes()] == ["worker-1", "worker-2"]


def test_pod_ranges_fall_back_to_node_podcidrs_naming_what_could_not_be_read(
    cluster: Any,
) -> None:
    cluster(
        FakeCluster(custom={("cilium.io", "v2", "ciliumnodes"): ApiException(403, "Forbidden")})
    )
    nodes = [NodeCIDRs("n1", ("10.244.0.0/24",)), NodeCIDRs("n2", ())]
    found = ipranges.find_node_pod_ranges(None, nodes, QUICK)  # type: ignore[arg-type]
    assert found.source == ipranges.SOURCE_NODE
    assert dict(found.ranges) == {"n1": ("10.244.0.0/24",)}
    (refused,) = found.unreadable
    assert refused.startswith("ciliumnodes.cilium.io: ")
    assert "403" in refused
