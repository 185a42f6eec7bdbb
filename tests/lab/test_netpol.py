"""The lab's NetworkPolicy engine end to end (root; `netlab up`, real runc pods on 3 nodes):
truth tables of real TCP and UDP connections between every ordered pair of the model's 9 pods
under the upstream e2e's shapes of policy (default deny, allow from a namespace, egress,
named ports, ipBlock except, AND of selectors, label and policy updates), the time a change
takes to reach every node, each ``netpol-*`` fault breaking exactly its cells, and
``--no-network-policy`` enforcing nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from netpol_kit import (
    ALL_PODS,
    ENFORCE_TIMEOUT,
    Cell,
    PolicyLab,
    differences,
    expect,
    policy_lab,
    settled_table,
)
from polling import until

from netlab.dataplane.cleanup import sweep
from netlab.dataplane.nsexec import run_in_netns

pytestmark = pytest.mark.needs_lab


def ns_of(key: str) -> str:
    return key.split("/")[0]


def select_ns(lab: PolicyLab, short: str) -> dict[str, object]:
    return {"matchLabels": {"kubernetes.io/metadata.name": lab.namespace(short)}}


@dataclass(frozen=True)
class Scenario:
    """Policies written by ``setup``, then one truth table (``proto``/``port``) that must
    equal ``expected``."""

    setup: Callable[[PolicyLab], None]
    expected: Callable[[str, str], bool]
    proto: str = "tcp"
    port: int = 80
    via_service: bool = False  # to the Services' cluster IPs (each pod to itself too)


def deny_all_ingress_into_x(lab: PolicyLab) -> None:
    lab.apply("x", "deny", {"podSelector": {}})


def deny_all_egress_from_x(lab: PolicyLab) -> None:
    lab.apply("x", "deny-out", {"podSelector": {}, "policyTypes": ["Egress"]})


def allow_x_from_namespace_y(lab: PolicyLab) -> None:
    lab.apply(
        "x",
        "from-y",
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
        },
    )


def allow_x_from_pod_a_of_y(lab: PolicyLab) -> None:
    peer = {
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "podSelector": {"matchLabels": {"pod": "a"}},
    }
    lab.apply("x", "ya-only", {"podSelector": {}, "ingress": [{"from": [peer]}]})


def allow_y_on_named_port_http(lab: PolicyLab) -> None:
    lab.apply("y", "http", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})


def allow_z_from_cidr_except_xb(lab: PolicyLab) -> None:
    address = lab.ips["x/b"]
    v6 = ":" in address
    except_ = f"{address}/{128 if v6 else 32}"
    block = {
        "ipBlock": {"cidr": "fd00:10:244::/56" if v6 else "10.244.0.0/16", "except": [except_]}
    }
    lab.apply("z", "cidr", {"podSelector": {}, "ingress": [{"from": [block]}]})


def x_egress_to_z_only(lab: PolicyLab) -> None:
    lab.apply(
        "x",
        "to-z",
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": select_ns(lab, "z")}], "ports": [{"port": 80}]}
            ],
        },
    )


def friend_label_followed(lab: PolicyLab) -> None:
    """x admits pods labelled role=friend; y/a gets the label after the policy is in place."""
    lab.apply(
        "x",
        "friends",
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"role": "friend"}},
                        }
                    ]
                }
            ],
        },
    )
    wait_rules(lab, lambda table: "policy-ingress/" in table)
    lab.core.patch_namespaced_pod(
        "a", lab.namespace("y"), {"metadata": {"labels": {"role": "friend"}}}
    )


def deleted_policy_stops(lab: PolicyLab) -> None:
    lab.apply("x", "deny", {"podSelector": {}})
    wait_rules(lab, lambda table: "policy-ingress/" in table)
    lab.delete_policies()


SCENARIOS: dict[str, Scenario] = {
    "default-deny-ingress": Scenario(deny_all_ingress_into_x, lambda s, d: ns_of(d) != "x"),
    "default-deny-egress": Scenario(deny_all_egress_from_x, lambda s, d: ns_of(s) != "x"),
    "allow-from-namespace": Scenario(
        allow_x_from_namespace_y, lambda s, d: ns_of(d) != "x" or ns_of(s) == "y"
    ),
    "pod-and-namespace-selector": Scenario(
        allow_x_from_pod_a_of_y, lambda s, d: ns_of(d) != "x" or s == "y/a"
    ),
    "named-port-80": Scenario(
        allow_y_on_named_port_http, lambda s, d: d != "y/c"
    ),  # http is 80 on y/a, y/b; 81 on y/c
    "named-port-81": Scenario(
        allow_y_on_named_port_http, lambda s, d: ns_of(d) != "y" or d == "y/c", port=81
    ),
    "ipblock-except": Scenario(
        allow_z_from_cidr_except_xb, lambda s, d: ns_of(d) != "z" or s != "x/b"
    ),
    "egress-to-namespace-tcp": Scenario(
        x_egress_to_z_only, lambda s, d: ns_of(s) != "x" or ns_of(d) == "z"
    ),
    "egress-to-namespace-udp": Scenario(
        x_egress_to_z_only, lambda s, d: ns_of(s) != "x", proto="udp"
    ),
    "label-update-followed": Scenario(
        friend_label_followed, lambda s, d: ns_of(d) != "x" or s == "y/a"
    ),
    "deleted-policy-gone": Scenario(deleted_policy_stops, lambda s, d: True),
    "default-deny-ingress-via-services": Scenario(
        deny_all_ingress_into_x, lambda s, d: ns_of(d) != "x", via_service=True
    ),
    "egress-to-namespace-via-services": Scenario(
        x_egress_to_z_only, lambda s, d: ns_of(s) != "x" or ns_of(d) == "z", via_service=True
    ),
}

# What each fault breaks: its scenario, and the cells of that scenario's table that flip.
FAULT_CELLS: dict[str, tuple[str, Callable[[str, str], bool]]] = {
    "netpol-ignored-on-node": ("default-deny-ingress", lambda s, d: d == "x/b"),
    "netpol-egress-ignored": ("default-deny-egress", lambda s, d: ns_of(s) == "x"),
    "netpol-named-ports-unresolved": ("named-port-80", lambda s, d: d in ("y/a", "y/b")),
    "netpol-except-ignored": ("ipblock-except", lambda s, d: s == "x/b" and ns_of(d) == "z"),
    "netpol-namespace-selector-as-pod-selector": (
        "allow-from-namespace",
        lambda s, d: ns_of(s) == "y" and ns_of(d) == "x",
    ),
    "netpol-peer-and-as-or": (
        "pod-and-namespace-selector",
        lambda s, d: ns_of(d) == "x" and s in ("y/b", "y/c", "x/a"),
    ),
    "netpol-labels-not-followed": (
        "label-update-followed",
        lambda s, d: s == "y/a" and ns_of(d) == "x",
    ),
    "netpol-deleted-policy-enforced": ("deleted-policy-gone", lambda s, d: ns_of(d) == "x"),
    "netpol-replies-dropped": (
        "default-deny-ingress",
        lambda s, d: ns_of(s) == "x" and ns_of(d) != "x",
    ),
}


def wait_rules(lab: PolicyLab, holds: Callable[[str], bool]) -> float:
    """Seconds until ``holds(table)`` for every node's nft table (polled every 20 ms)."""
    started = time.monotonic()
    until(
        lambda: all(holds(table) for table in lab.node_tables().values()),
        ENFORCE_TIMEOUT,
        "the rules on every node",
        interval=0.02,
    )
    return time.monotonic() - started


def run_scenario(lab: PolicyLab, name: str, *, clean_up: bool = True) -> dict[Cell, str]:
    """The scenario's policies on a lab without any, its table, then (``clean_up``) the
    policies removed again and gone from every node; returns the cells that differ from the
    scenario's expectation."""
    scenario = SCENARIOS[name]
    scenario.setup(lab)
    expected = expect(scenario.expected, self_cells=scenario.via_service)
    observed = settled_table(
        lab, expected, scenario.proto, scenario.port, via_service=scenario.via_service
    )
    if clean_up:
        lab.delete_policies()
        wait_rules(lab, lambda table: "policy-" not in table)
    return differences(expected, observed)


def test_policies_are_enforced_on_every_node(lab_names: Callable[[], str]) -> None:
    name = lab_names()
    try:
        with policy_lab(name) as lab:
            baseline = lab.truth_table()
            assert all(baseline.values()), differences(expect(lambda s, d: True), baseline)
            for scenario in SCENARIOS:
                wrong = run_scenario(lab, scenario)
                assert not wrong, f"{scenario}: {wrong}"
                cells = len(ALL_PODS) ** 2 - (
                    0 if SCENARIOS[scenario].via_service else len(ALL_PODS)
                )
                print(f"{scenario}: {cells} cells as expected")
            check_node_traffic(lab)
            measure_latency(lab)
    finally:
        sweep(name)


def check_node_traffic(lab: PolicyLab) -> None:
    """Under a default deny in x: each node's own stack still reaches x's pod on that node
    (traffic from a pod's own node is always allowed), other nodes are outside addresses."""
    deny_all_ingress_into_x(lab)
    wait_rules(lab, lambda table: "policy-ingress/" in table)
    for node, own in (("node-1", "x/a"), ("node-2", "x/b")):
        seen = lab.from_node(node, ["x/a", "x/b", "x/c", "y/a"])
        wanted = {d: d == own or not d.startswith("x/") for d in seen}
        assert seen == wanted, f"from {node}'s host: saw {seen}, expected {wanted}"
    lab.delete_policies()
    wait_rules(lab, lambda table: "policy-" not in table)
    print("node traffic: own node allowed, other nodes denied under default deny")


def measure_latency(lab: PolicyLab) -> None:
    """How long after the API accepted a change every node's rules have it: a new policy, a
    pod's new label (its address in a peer set), a namespace's new label, a deleted policy."""
    figures: dict[str, float] = {}
    accepted = lab.apply(
        "x",
        "lat",
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "blue"}},
                            "podSelector": {"matchLabels": {"role": "probe"}},
                        }
                    ]
                }
            ],
        },
    )
    wait_rules(lab, lambda table: "policy-ingress/" in table)
    figures["policy created"] = time.monotonic() - accepted
    z_b = lab.ips["z/b"]
    peer_set = re.compile(
        r"set peers/[^{]*\{[^}]*elements = \{[^}]*" + re.escape(z_b) + r"[,\s}]", re.S
    )
    lab.core.patch_namespace(lab.namespace("z"), {"metadata": {"labels": {"team": "blue"}}})
    accepted = time.monotonic()
    # No pod of z has role=probe yet: the namespace label alone adds no address.
    lab.core.patch_namespaced_pod(
        "b", lab.namespace("z"), {"metadata": {"labels": {"role": "probe"}}}
    )
    accepted_pod = time.monotonic()
    wait_rules(lab, lambda table: bool(peer_set.search(table)))
    figures["namespace + pod label"] = time.monotonic() - accepted
    figures["pod label"] = time.monotonic() - accepted_pod
    lab.core.patch_namespace(lab.namespace("z"), {"metadata": {"labels": {"team": None}}})
    accepted = time.monotonic()
    wait_rules(lab, lambda table: not peer_set.search(table))
    figures["namespace label removed"] = time.monotonic() - accepted
    accepted = lab.delete_policies()
    wait_rules(lab, lambda table: "policy-" not in table)
    figures["policy deleted"] = time.monotonic() - accepted
    print(
        "enforcement latency on 3 nodes (API accepted -> every node's nft table): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures.items())
    )
    assert max(figures.values()) < ENFORCE_TIMEOUT


@pytest.mark.parametrize("fault", list(FAULT_CELLS))
def test_each_fault_breaks_exactly_its_cells(fault: str, lab_names: Callable[[], str]) -> None:
    scenario, broken = FAULT_CELLS[fault]
    name = lab_names()
    try:
        with policy_lab(name, "--fault", fault) as lab:
            wrong = run_scenario(lab, scenario, clean_up=False)
            wanted = {cell for cell in expect(broken) if expect(broken)[cell]}
            assert set(wrong) == wanted, (
                f"{fault} under {scenario}: wrong cells {sorted(wrong)}, "
                f"expected exactly {sorted(wanted)}"
            )
            print(f"{fault}: {scenario} broke exactly {len(wanted)} cells")
    finally:
        sweep(name)


DUAL_STACK_SCENARIOS = (
    "default-deny-ingress",
    "allow-from-namespace",
    "ipblock-except",
    "egress-to-namespace-tcp",
)


def test_policies_are_enforced_in_both_families(lab_names: Callable[[], str]) -> None:
    """A dual-stack lab: the same policies hold for IPv4 and IPv6 connections."""
    name = lab_names()
    try:
        with policy_lab(name, "--ip-family", "dual") as lab:
            for version in (6, 4):
                lab.use_family(version)
                for scenario in DUAL_STACK_SCENARIOS:
                    wrong = run_scenario(lab, scenario)
                    assert not wrong, f"IPv{version} {scenario}: {wrong}"
                    print(f"IPv{version} {scenario}: as expected")
    finally:
        sweep(name)


def test_no_network_policy_lab_enforces_nothing(lab_names: Callable[[], str]) -> None:
    name = lab_names()
    try:
        with policy_lab(name, "--no-network-policy") as lab:
            lab.apply("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
            table = lab.truth_table()
            assert all(table.values()), differences(expect(lambda s, d: True), table)
            for node in ("node-1", "node-2", "node-3"):
                tables = run_in_netns(lab.node_netns(node), ["nft", "list", "tables"]).stdout
                assert "netlab-netpol" not in tables, f"{node}: {tables}"
    finally:
        sweep(name)
