"""`conformance.kit.cluster` and `conformance.kit.discovery`: the facts read off a node and its
pods, the `Discovery` handed between the run's processes, and how long a node's network is
given to turn ready."""

from __future__ import annotations

import json

from kube_objects import make_node
from kubernetes import client

from conformance.kit import cluster
from conformance.kit.discovery import Discovery, network_wait
from conformance.kit.families import FamilyPlan
from conformance.kit.nodes import (
    CORDONED,
    NETWORK_NOT_READY,
    NOEXECUTE,
    NOT_READY,
    Exclusion,
    select_nodes,
)
from conformance.kit.settings import Settings


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
