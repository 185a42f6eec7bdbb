"""The DNS checks follow the pods' own resolver (`conformance.kit.cluster.resolvers`): tested through
whatever nameserver kubelet wrote, whatever the DNS Service is called; skipped only when kubelet
configures no cluster DNS on any node (it then gives ClusterFirst pods the node's own
resolv.conf, `pkg/kubelet/network/dns/dns.go`); a node without one among nodes with one is
broken; resolvers that could not be read are could-not-test. And `read_resolvers`, which reads
them from the probes with a fake probe client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from recording_agents import RecordingProbeClient

from conformance.kit.cluster.resolvers import (
    CLUSTER_FIRST,
    CLUSTER_NO_DOMAIN,
    DNS_BROKEN,
    DNS_SKIP,
    DNS_TEST,
    DNS_UNTESTED,
    NODE_FALLBACK,
    UNKNOWN,
    NodeResolvers,
    Resolver,
    cluster_domain_from_search,
    kubelet_dns,
    plan_dns,
)
from conformance.kit.probes.client import ProbeResponse
from conformance.kit.probes.model import ProbeMap, planned_probes
from conformance.kit.probes.service_deployment import read_resolvers

NS = "netconform-r1-abc"
# kubelet with clusterDNS 10.96.0.10 and clusterDomain example.org (ClusterFirst pods).
CLUSTER = Resolver(
    ("10.96.0.10",),
    (f"{NS}.svc.example.org", "svc.example.org", "example.org", "corp.example"),
    ("ndots:5",),
)
# The node's own resolv.conf, as realk8s's kubelets read it ("nameserver 127.0.0.1").
NODE = Resolver(("127.0.0.1",))
# kubelet with clusterDNS but no clusterDomain: its nameserver, the node's search list, ndots:5.
NO_DOMAIN = Resolver(("10.96.0.10",), ("corp.example",), ("ndots:5",))


def resolvers(**by_node: tuple[Resolver | None, Resolver | None]) -> dict[str, NodeResolvers]:
    return {
        node: NodeResolvers(f"probe-{node}", pod, f"hostprobe-{node}" if host else "", host)
        for node, (pod, host) in by_node.items()
    }


def test_the_agents_resolver_answer_is_read_and_described() -> None:
    raw = {"nameservers": ["10.96.0.10"], "search": ["a.svc.cluster.local"], "options": []}
    found = Resolver.from_info(raw)
    assert found == Resolver(("10.96.0.10",), ("a.svc.cluster.local",), ())
    assert Resolver.from_info(None) is None
    assert CLUSTER.describe() == (
        f"nameserver 10.96.0.10; search {NS}.svc.example.org svc.example.org example.org "
        "corp.example; options ndots:5"
    )
    assert NODE.describe() == "nameserver 127.0.0.1; no search list"


def test_the_same_configuration_ignores_option_order_and_trailing_dots() -> None:
    one = Resolver(("10.0.0.1",), ("a.example.",), ("ndots:5", "edns0"))
    assert one.same_as(Resolver(("10.0.0.1",), ("a.example",), ("edns0", "ndots:5")))
    assert not one.same_as(Resolver(("10.0.0.2",), ("a.example",), ("edns0", "ndots:5")))
    assert not one.same_as(Resolver(("10.0.0.1",), (), ("edns0", "ndots:5")))


def test_the_cluster_domain_comes_from_the_run_namespaces_search_entry() -> None:
    assert cluster_domain_from_search(CLUSTER.search, NS) == "example.org"
    assert cluster_domain_from_search(["other.svc.cluster.local"], NS) is None


def test_how_kubelet_configured_a_node() -> None:
    found = resolvers(
        n1=(CLUSTER, None), n2=(NODE, NODE), n3=(NO_DOMAIN, NODE), n4=(None, None), n5=(NODE, None)
    )
    assert {n: kubelet_dns(r, NS) for n, r in found.items()} == {
        "n1": CLUSTER_FIRST,
        "n2": NODE_FALLBACK,
        "n3": CLUSTER_NO_DOMAIN,
        "n4": UNKNOWN,  # the pod's resolv.conf was unreadable
        "n5": UNKNOWN,  # the node's own was never read
    }


def test_a_cluster_dns_under_any_service_name_is_tested_through_the_pods_resolver() -> None:
    found = resolvers(n1=(CLUSTER, None), n2=(CLUSTER, None))
    plan = plan_dns("n2", found, NS)
    assert plan.action == DNS_TEST
    assert plan.resolver == CLUSTER
    assert plan.domain == "example.org"
    assert plan.note == ""


def test_no_cluster_dns_on_any_node_skips_with_one_reason_naming_kubelet() -> None:
    found = resolvers(n1=(NODE, NODE), n2=(NODE, NODE), n3=(NODE, NODE))
    plans = [plan_dns(node, found, NS) for node in found]
    assert {p.action for p in plans} == {DNS_SKIP}
    assert len({p.reason for p in plans}) == 1  # the rule line says it once
    assert plans[0].reason.startswith("kubelet configures no cluster DNS on any tested node")
    assert "n1: nameserver 127.0.0.1" in plans[0].reason


def test_a_node_without_cluster_dns_among_nodes_with_it_is_broken() -> None:
    found = resolvers(n1=(CLUSTER, None), n2=(NODE, NODE), n3=(CLUSTER, None))
    plan = plan_dns("n2", found, NS)
    assert plan.action == DNS_BROKEN
    assert "kubelet on n2 configures no cluster DNS" in plan.reason
    assert "kubelet on n1, n3 configures one (n1: nameserver 10.96.0.10" in plan.reason
    assert plan_dns("n1", found, NS).action == DNS_TEST


def test_cluster_nameservers_without_a_cluster_domain_are_tested_with_a_note() -> None:
    plan = plan_dns("n1", resolvers(n1=(NO_DOMAIN, NODE)), NS)
    assert plan.action == DNS_TEST
    assert plan.domain == "cluster.local"
    assert "no cluster domain" in plan.note


def test_unread_resolvers_could_not_test() -> None:
    found = {
        "n1": NodeResolvers("probe-n1", error="exec failed"),
        "n2": NodeResolvers("probe-n2", NODE, "hostprobe-n2", None),
    }
    assert plan_dns("n1", found, NS).action == DNS_UNTESTED
    assert "exec failed" in plan_dns("n1", found, NS).reason
    assert plan_dns("n2", found, NS).action == DNS_UNTESTED
    assert plan_dns("n3", found, NS).action == DNS_UNTESTED


CHOICES = {"cluster": (CLUSTER, None), "node": (NODE, NODE), "no-domain": (NO_DOMAIN, NODE)}


@given(st.lists(st.sampled_from(sorted(CHOICES)), min_size=1, max_size=6))
def test_skipped_only_when_no_node_has_a_cluster_dns(kinds: list[str]) -> None:
    found = resolvers(**{f"n{i}": CHOICES[kind] for i, kind in enumerate(kinds)})
    actions = {node: plan_dns(node, found, NS).action for node in found}
    if all(kind == "node" for kind in kinds):
        assert set(actions.values()) == {DNS_SKIP}
    else:
        assert DNS_SKIP not in actions.values()
        for node, kind in zip(found, kinds, strict=True):
            assert actions[node] == (DNS_BROKEN if kind == "node" else DNS_TEST)


# --- reading the resolvers from the probes ---------------------------------------------------


@dataclass
class ResolverAgents(RecordingProbeClient):
    """``info`` answers with the resolver each pod has (``None``: resolv.conf unreadable)."""

    files: Mapping[str, Resolver | None] = field(default_factory=dict)

    def call(
        self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]
    ) -> list[ProbeResponse]:
        self.record(pod, container, requests)
        found = self.files[pod]
        raw = None if found is None else {k: list(v) for k, v in found.to_dict().items()}
        return [{"ok": True, "op": "info", "resolver": raw} for _ in requests]


def test_the_node_resolver_is_read_only_where_the_pod_is_not_cluster_first() -> None:
    probe_map = ProbeMap(NS, planned_probes(["n1", "n2", "n3"]))
    agents = ResolverAgents(
        files={
            "probe-n1": CLUSTER,
            "probe-n2": NODE,
            "hostprobe-n2": NODE,
            "probe-n3": None,
        },
    )
    found = read_resolvers(agents, probe_map, ["n1", "n2", "n3"])  # type: ignore[arg-type]
    assert found["n1"] == NodeResolvers("probe-n1", CLUSTER)
    assert found["n2"] == NodeResolvers("probe-n2", NODE, "hostprobe-n2", NODE)
    assert found["n3"] == NodeResolvers("probe-n3", None)
    assert sorted(pod for pod, _, _ in agents.calls) == [
        "hostprobe-n2",
        *(f"probe-n{i}" for i in (1, 2, 3)),
    ]


def test_a_probe_that_cannot_be_asked_costs_only_its_own_node() -> None:
    probe_map = ProbeMap(NS, planned_probes(["n1", "n2"]))
    agents = ResolverAgents(
        files={"probe-n1": NODE, "hostprobe-n1": NODE, "probe-n2": NODE},
        broken=frozenset({("hostprobe-n1", "agent"), ("probe-n2", "a")}),
    )
    found = read_resolvers(agents, probe_map, ["n1", "n2"])  # type: ignore[arg-type]
    assert found["n1"].pod == NODE
    assert found["n1"].node is None
    assert "container not running" in str(found["n1"].error)
    assert found["n2"].pod is None
    assert "container not running" in str(found["n2"].error)
    assert plan_dns("n1", found, NS).action == DNS_UNTESTED
