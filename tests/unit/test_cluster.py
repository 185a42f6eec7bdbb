"""`conformance.kit.cluster`: which nodes carry probes and why the others are left out (from
client model objects), the facts read off a node, and the `Discovery` handed between the
run's processes."""

from __future__ import annotations

import json
from typing import Any

from kube_objects import CP_TAINT, make_node
from kubernetes import client

from conformance.kit import cluster
from conformance.kit.settings import Settings, parse_node_selector, parse_taint_toleration


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


def test_selection_filters_and_sorts() -> None:
    nodes = [
        make_node("node-c"),
        make_node("node-a"),
        make_node("cp", taints=CP_TAINT, labels={"node-role.kubernetes.io/control-plane": ""}),
        make_node("down", ready=False),
        make_node("cordoned", unschedulable=True),
        make_node("win", labels={"kubernetes.io/os": "windows"}),
        make_node("prefer", taints=[("x", "PreferNoSchedule")]),
    ]
    selection = cluster.select_nodes(nodes, settings())
    assert selection.names == ("node-a", "node-c", "prefer")
    assert "not Ready" in selection.excluded["down"]
    assert "cordoned" in selection.excluded["cordoned"]
    assert "windows" in selection.excluded["win"]
    assert "--include-control-plane" in selection.excluded["cp"]

    with_cp = cluster.select_nodes(nodes, settings(include_control_plane=True))
    assert with_cp.names == ("cp", "node-a", "node-c", "prefer")


def test_selection_by_label_and_cap() -> None:
    nodes = [make_node(f"n{i}", labels={"pool": "x" if i % 2 else "y"}) for i in range(6)]
    picked = cluster.select_nodes(
        nodes, settings(node_selector=parse_node_selector("pool=x"), max_nodes=2)
    )
    assert picked.names == ("n1", "n3")
    assert "beyond --max-nodes 2" in picked.excluded["n5"]
    assert "--node-selector pool=x" in picked.excluded["n0"]


def test_every_exclusion_has_a_reason_and_tolerations_include() -> None:
    win_by_info = make_node("win-info")
    assert win_by_info.metadata is not None
    assert win_by_info.status is not None
    win_by_info.metadata.labels = {}  # no kubernetes.io/os label: the OS comes from nodeInfo
    win_by_info.status.node_info = client.V1NodeSystemInfo(
        architecture="amd64",
        boot_id="b",
        container_runtime_version="containerd://1.7",
        kernel_version="10.0",
        kube_proxy_version="v1.33.0",
        kubelet_version="v1.33.0",
        machine_id="m",
        operating_system="windows",
        os_image="Windows Server 2022",
        system_uuid="u",
    )
    nodes = [
        make_node("ok"),
        win_by_info,
        make_node("down-cordoned", ready=False, unschedulable=True),
        make_node("gpu", taints=[("example.com/gpu", "NoSchedule")]),
        make_node("evict", taints=[("example.com/drain", "NoExecute")]),
        make_node(
            "cp",
            taints=[*CP_TAINT, ("example.com/gpu", "NoSchedule")],
            labels={"node-role.kubernetes.io/control-plane": ""},
        ),
        make_node("soft", taints=[("x", "PreferNoSchedule")]),
    ]
    plain = cluster.select_nodes(nodes, settings())
    assert plain.names == ("ok", "soft")
    assert set(plain.excluded) == {"win-info", "down-cordoned", "gpu", "evict", "cp"}
    assert "windows" in plain.excluded["win-info"]
    assert plain.excluded["down-cordoned"] == "not Ready"  # the first reason wins
    assert "--tolerate-taint example.com/gpu:NoSchedule" in plain.excluded["gpu"]
    assert "--tolerate-taint example.com/drain:NoExecute" in plain.excluded["evict"]

    gpu = settings(tolerate_taints=(parse_taint_toleration("example.com/gpu"),))
    assert cluster.select_nodes(nodes, gpu).names == ("gpu", "ok", "soft")
    # Control-plane tolerations alone do not cover the node's second taint.
    cp_only = cluster.select_nodes(nodes, settings(include_control_plane=True))
    assert "cp" not in cp_only.names
    assert "example.com/gpu:NoSchedule" in cp_only.excluded["cp"]
    assert "node-role" not in cp_only.excluded["cp"]
    both = settings(include_control_plane=True, tolerate_taints=gpu.tolerate_taints)
    assert cluster.select_nodes(nodes, both).names == ("cp", "gpu", "ok", "soft")
    wrong_effect = settings(
        tolerate_taints=(parse_taint_toleration("example.com/drain:NoSchedule"),)
    )
    assert "evict" in cluster.select_nodes(nodes, wrong_effect).excluded


def test_selection_keeps_the_node_object_name_never_a_hostname() -> None:
    # Kubelets may report a hostname (label, address) that differs from the Node's name; the
    # probes are pinned by name (see test_podspecs).
    node = make_node(
        "ip-10-0-0-5.internal",
        labels={"kubernetes.io/hostname": "worker-a"},
        addresses=(("Hostname", "worker-a"), ("InternalIP", "10.0.0.5")),
    )
    assert cluster.select_nodes([node], settings()).names == ("ip-10-0-0-5.internal",)
    assert cluster.node_ip_addresses(node) == ("10.0.0.5",)


def test_node_facts_helpers() -> None:
    node = make_node(
        "n1",
        pod_cidrs=("10.244.1.0/24", "fd00:1::/64"),
        addresses=(("Hostname", "n1"), ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.0.0.5")),
    )
    assert cluster.node_pod_cidrs(node) == ("10.244.1.0/24", "fd00:1::/64")
    assert cluster.node_ip_addresses(node) == ("10.0.0.5", "203.0.113.9")
    assert cluster.detect_ip_families([node]) == (4, 6)
    assert cluster.families_for("auto", ()) == (4,)
    assert cluster.families_for("dual", (4,)) == (4, 6)
    pod = client.V1Pod(
        spec=client.V1PodSpec(containers=[]),
        status=client.V1PodStatus(pod_ips=[client.V1PodIP(ip="fd00::5")], pod_ip="fd00::5"),
    )
    assert cluster.detect_ip_families([make_node("bare")], [pod]) == (6,)


def test_discovery_round_trips_with_its_exclusions() -> None:
    found = cluster.Discovery(
        nodes=("a", "b"), excluded={"z": "not Ready", "c": "cordoned"}, families=(4, 6)
    )
    again = cluster.Discovery.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again == found
    assert again.exclusion_lines() == ["node c left out: cordoned", "node z left out: not Ready"]
    assert again.explain_excluded() == "c: cordoned; z: not Ready"
    failed = cluster.Discovery(error="cannot read the cluster: x")
    assert cluster.Discovery.from_dict(failed.to_dict()) == failed
    assert cluster.Discovery.from_dict({}) == cluster.Discovery()  # defaults fill the gaps
