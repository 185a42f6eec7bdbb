"""`conformance.kit.cluster.inventory` and `conformance.kit.cluster.discovery`: the facts read off a node and its
pods, the `Discovery` handed between the run's processes, and how long a node's network is
given to turn ready."""

from __future__ import annotations

import json

import pytest
from kube_objects import make_node
from kubernetes import client

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Settings
from conformance.kit.cluster import discovery
from conformance.kit.cluster import inventory as cluster
from conformance.kit.cluster.discovery import Discovery, network_wait
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.nodes import (
    CORDONED,
    NETWORK_NOT_READY,
    NOEXECUTE,
    NOT_READY,
    Exclusion,
    select_nodes,
)


def test_selection_keeps_the_node_object_name_never_a_hostname() -> None:
    # Kubelets may report a hostname (label, address) that differs from the Node's name; the
    # probes are pinned by name (see test_podspecs).
    node = make_node(
        "ip-10-0-0-5.internal",
        labels={"kubernetes.io/hostname": "worker-a"},
        addresses=(("Hostname", "worker-a"), ("InternalIP", "10.0.0.5")),
    )
    picked = select_nodes([node], Settings(kubeconfig=None, context=None))
    assert picked.names == ("ip-10-0-0-5.internal",)
    assert cluster.node_ip_addresses(node) == ("10.0.0.5",)


def test_node_facts_helpers() -> None:
    node = make_node(
        "n1",
        pod_cidrs=("10.244.1.0/24", "fd00:1::/64"),
        addresses=(("Hostname", "n1"), ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.0.0.5")),
    )
    assert cluster.node_pod_cidrs(node) == ("10.244.1.0/24", "fd00:1::/64")
    assert cluster.node_ip_addresses(node) == ("10.0.0.5", "203.0.113.9")
    pod = client.V1Pod(
        spec=client.V1PodSpec(containers=[]),
        status=client.V1PodStatus(pod_ips=[client.V1PodIP(ip="fd00::5")], pod_ip="fd00::5"),
    )
    host = client.V1Pod(
        spec=client.V1PodSpec(containers=[], host_network=True),
        status=client.V1PodStatus(pod_ip="10.0.0.5"),
    )
    assert cluster.pod_network_families([pod, host]) == (6,)


def test_discovery_round_trips_with_its_exclusions() -> None:
    found = Discovery(
        nodes=("a", "b"),
        excluded={
            "z": Exclusion(NOT_READY, "not Ready"),
            "c": Exclusion(CORDONED, "cordoned", narrowed=True),
        },
        family_plan=FamilyPlan(tested=(4, 6), required=(4, 6), declared={"4": ("x",)}),
        checked=("a", "b", "z"),
        ready_deadline=12.5,
    )
    again = Discovery.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again == found
    assert again.families == (4, 6)
    assert again.required_families == (4, 6)
    assert again.exclusion_lines() == [
        "node c left out: cordoned (narrowed: cordoned)",
        "node z left out: not Ready",
    ]
    assert again.explain_excluded() == "c: cordoned (narrowed: cordoned); z: not Ready"
    failed = Discovery(error="cannot read the cluster: x")
    assert Discovery.from_dict(failed.to_dict()) == failed
    assert Discovery.from_dict({}) == Discovery()  # defaults fill the gaps


def test_a_node_waited_for_gets_what_is_left_of_the_wait_others_the_whole_bound() -> None:
    found = Discovery(
        nodes=("a",),
        excluded={
            "slow": Exclusion(NETWORK_NOT_READY, "network not ready"),
            "evict": Exclusion(NOEXECUTE, "tainted"),
        },
        ready_deadline=100.0,
    )
    assert network_wait(found, "slow", 60.0, now=70.0) == 30.0
    assert network_wait(found, "slow", 60.0, now=170.0) == 0.0
    assert network_wait(found, "a", 60.0, now=170.0) == 60.0  # seen ready: a fresh wait
    assert network_wait(found, "evict", 60.0, now=70.0) == 60.0
    assert network_wait(Discovery(nodes=("a",)), "a", 60.0, now=1.0) == 60.0


class FakeCore:
    """Stands for the API client; the fakes below answer for it."""

    def list_node(self, **kwargs: object) -> None:
        raise AssertionError("answered by the fakes")


class FakeCluster:
    """What `discover` reads, chosen per test: the node lists in turn (the last one repeats),
    the default/kubernetes Service's families, the ServiceCIDRs (or the error they raise)."""

    def __init__(
        self,
        *node_lists: list[client.V1Node],
        service: tuple[str, ...] = ("IPv4",),
        cidrs: tuple[str, ...] | Exception = (),
    ) -> None:
        self.node_lists = list(node_lists)
        self.service = service
        self.cidrs = cidrs
        self.waits: list[float] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def nodes(core: object, timeouts: object) -> list[client.V1Node]:
            return self.node_lists.pop(0) if len(self.node_lists) > 1 else self.node_lists[0]

        def service_cidrs(api: object, timeouts: object) -> tuple[str, ...]:
            if isinstance(self.cidrs, Exception):
                raise self.cidrs
            return self.cidrs

        def wait(*args: object, timeout: float, **kwargs: object) -> None:
            self.waits.append(timeout)

        monkeypatch.setattr(discovery, "make_api_client", lambda settings: object())
        monkeypatch.setattr(discovery.client, "CoreV1Api", lambda api: FakeCore())
        monkeypatch.setattr(discovery, "list_nodes", nodes)
        monkeypatch.setattr(discovery, "kubernetes_service_families", lambda *a: self.service)
        monkeypatch.setattr(discovery, "declared_service_cidrs", service_cidrs)
        monkeypatch.setattr(discovery, "wait_on_list", wait)
        monkeypatch.setattr(discovery, "list_pods_all_namespaces", lambda *a: [])


DUAL = ("10.244.1.0/24", "fd00:10:244:1::/64")


def test_discovery_requires_the_declared_families(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCluster([make_node("n1", pod_cidrs=DUAL), make_node("n2", pod_cidrs=DUAL)]).install(
        monkeypatch
    )
    found = discovery.discover(Settings(kubeconfig=None, context=None))
    assert (found.nodes, found.families, found.required_families) == (("n1", "n2"), (4, 6), (4, 6))
    assert found.checked == ("n1", "n2")
    assert found.ready_deadline is None
    narrowed = discovery.discover(Settings(kubeconfig=None, context=None, ip_family="ipv4"))
    assert (narrowed.families, narrowed.family_plan.narrowed) == ((4,), (6,))


def test_discovery_names_an_unreadable_family_source_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = ClusterError("list servicecidrs.networking.k8s.io failed: HTTP 403 Forbidden")
    FakeCluster([make_node("n1", pod_cidrs=DUAL[:1])], cidrs=refused).install(monkeypatch)
    found = discovery.discover(Settings(kubeconfig=None, context=None))
    assert found.error is None
    assert found.families == (4,)
    (unread,) = found.family_plan.unread
    assert "ServiceCIDR objects" in unread
    assert "HTTP 403" in unread


def test_discovery_waits_for_nodes_not_ready_yet_and_keeps_those_that_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lingering = make_node("n2", taints=[("node.kubernetes.io/not-ready", "NoSchedule")])
    win = make_node("win", labels={"kubernetes.io/os": "windows"})
    fake = FakeCluster(
        [make_node("n1"), lingering, make_node("n3", ready=False), win],
        [make_node("n1"), make_node("n2"), make_node("n3", ready=False), win],
    )
    fake.install(monkeypatch)
    found = discovery.discover(Settings(kubeconfig=None, context=None))
    assert fake.waits == [60.0]  # Timeouts.node_ready, once for the run
    assert found.ready_deadline is not None
    assert found.nodes == ("n1", "n2")  # the taint cleared while the run waited
    assert {n: why.kind for n, why in found.excluded.items()} == {
        "n3": NOT_READY,
        "win": "windows",
    }
    assert found.checked == ("n1", "n2", "n3", "win")  # the network check judges them all


def test_discovery_reports_unknown_exclude_node_names_and_unreadable_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeCluster([make_node("node-1"), make_node("node-2")]).install(monkeypatch)
    found = discovery.discover(
        Settings(kubeconfig=None, context=None, exclude_nodes=("node-2", "nod-9"))
    )
    assert found.usage_error == (
        "--exclude-node: no node named nod-9 (the cluster's nodes: node-1, node-2)"
    )
    assert found.checked == ("node-1",)  # node-2 was narrowed away
    FakeCluster([make_node("n1")], cidrs=ClusterError("x")).install(monkeypatch)

    def unreachable(core: object, timeouts: object) -> list[client.V1Node]:
        raise ClusterError("list nodes failed: connection refused")

    monkeypatch.setattr(discovery, "list_nodes", unreachable)
    down = discovery.discover(Settings(kubeconfig=None, context=None))
    assert down.error == "cannot read the cluster: list nodes failed: connection refused"
    everything_out = FakeCluster([make_node("n1", ready="Unknown")])
    everything_out.install(monkeypatch)
    none = discovery.discover(Settings(kubeconfig=None, context=None))
    assert none.error is not None
    assert none.error.startswith("no node can carry probes: n1: not Ready")
    assert none.checked == ("n1",)


class ListedNodes:
    """A core API whose node list is fixed (``field_selector`` honoured for metadata.name)."""

    def __init__(self, *nodes: client.V1Node) -> None:
        self.nodes = nodes
        self.asked: list[str] = []

    def list_node(self, field_selector: str = "", **kwargs: object) -> client.V1NodeList:
        self.asked.append(field_selector)
        name = field_selector.removeprefix("metadata.name=")
        return client.V1NodeList(
            items=[n for n in self.nodes if not name or n.metadata.name == name]
        )


def test_one_nodes_network_is_read_once_when_its_wait_is_over() -> None:
    broken = make_node("n2", taints=[("node.kubernetes.io/network-unavailable", "NoSchedule")])
    core = ListedNodes(make_node("n1"), broken)
    timeouts = Settings(kubeconfig=None, context=None).timeouts
    node = discovery.node_network_settled(core, "n2", 0, timeouts)  # type: ignore[arg-type]
    assert node.metadata.name == "n2"
    assert core.asked == ["metadata.name=n2"]
    with pytest.raises(ClusterError, match="node gone is gone"):
        discovery.node_network_settled(core, "gone", 0, timeouts)  # type: ignore[arg-type]
