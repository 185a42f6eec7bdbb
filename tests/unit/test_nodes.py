"""`conformance.kit.cluster.nodes`: which nodes a run tests, why each other node is left out (the
user's narrowing or the suite's own judgement), what says a node's network is not ready, and
which exclusions make a run exit 2."""

from __future__ import annotations

from typing import Any

import pytest
from kube_objects import CP_TAINT, make_node
from kubernetes import client

from conformance.kit.base.settings import (
    ALLOWABLE_EXCLUSIONS,
    Settings,
    parse_allow_excluded,
    parse_exclude_node,
    parse_node_selector,
    parse_taint_toleration,
)
from conformance.kit.cluster import nodes

#: The Ready condition kubelet writes when the runtime's network plugin is not ready
#: (pkg/kubelet/nodestatus/setters.go ReadyCondition, pkg/kubelet/kubelet.go updateRuntimeUp).
CNI_NOT_READY = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni plugin not initialized"
)


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


def kinds(selection: nodes.NodeSelection) -> dict[str, tuple[str, bool]]:
    return {name: (why.kind, why.narrowed) for name, why in selection.excluded.items()}


def test_cordoned_and_noschedule_nodes_are_tested_by_default() -> None:
    # Probes are pinned by nodeName: kubelet ignores cordons and NoSchedule taints.
    everyone = [
        make_node("plain"),
        make_node("cordoned", unschedulable=True),
        make_node("gpu", taints=[("example.com/gpu", "NoSchedule")]),
        make_node("soft", taints=[("x", "PreferNoSchedule")]),
    ]
    assert nodes.select_nodes(everyone, settings()).names == ("cordoned", "gpu", "plain", "soft")
    told = settings(allow_excluded=parse_allow_excluded("cordoned,noschedule"))
    picked = nodes.select_nodes(everyone, told)
    assert picked.names == ("plain", "soft")
    assert kinds(picked) == {
        "cordoned": (nodes.CORDONED, True),
        "gpu": (nodes.NOSCHEDULE, True),
    }


def test_the_suites_own_exclusions_are_not_narrowing_unless_accepted() -> None:
    win = make_node("win", labels={"kubernetes.io/os": "windows"})
    bsd = make_node("bsd", labels={"kubernetes.io/os": "freebsd"})
    gone = make_node("gone", ready="Unknown", reason="NodeStatusUnknown")
    evict = make_node("evict", taints=[("example.com/drain", "NoExecute")])
    everyone = [make_node("ok"), win, bsd, gone, evict]
    plain = nodes.select_nodes(everyone, settings())
    assert plain.names == ("ok",)
    assert kinds(plain) == {
        "win": (nodes.WINDOWS, False),
        "bsd": (nodes.NOT_LINUX, False),
        "gone": (nodes.NOT_READY, False),
        "evict": (nodes.NOEXECUTE, False),
    }
    assert "--tolerate-taint example.com/drain:NoExecute" in plain.excluded["evict"].reason
    assert "Ready=Unknown (NodeStatusUnknown)" in plain.excluded["gone"].reason
    accepted = settings(allow_excluded=ALLOWABLE_EXCLUSIONS)
    assert all(why.narrowed for why in nodes.select_nodes(everyone, accepted).excluded.values())
    tolerated = settings(tolerate_taints=(parse_taint_toleration("example.com/drain"),))
    assert "evict" in nodes.select_nodes(everyone, tolerated).names


def test_the_users_narrowing_comes_first_and_is_narrowing() -> None:
    everyone = [make_node(f"n{i}", labels={"pool": "x" if i % 2 else "y"}) for i in range(6)] + [
        make_node("cp", taints=CP_TAINT, labels={"node-role.kubernetes.io/control-plane": ""}),
        make_node("down-but-named", ready=False, labels={"pool": "x"}),
    ]
    picked = nodes.select_nodes(
        everyone,
        settings(
            node_selector=parse_node_selector("pool=x"),
            max_nodes=1,
            exclude_nodes=(parse_exclude_node("n3"), parse_exclude_node("down-but-named")),
        ),
    )
    assert picked.names == ("n1",)
    assert kinds(picked) == {
        "n0": (nodes.NOT_SELECTED, True),
        "n2": (nodes.NOT_SELECTED, True),
        "n4": (nodes.NOT_SELECTED, True),
        "n3": (nodes.BY_NAME, True),
        "down-but-named": (nodes.BY_NAME, True),  # the name wins over not Ready
        "n5": (nodes.BEYOND_MAX, True),
        "cp": (nodes.NOT_SELECTED, True),
    }
    # Control-plane nodes are left out by default, as a documented narrowing.
    default = nodes.select_nodes(everyone, settings())
    assert default.excluded["cp"].kind == nodes.CONTROL_PLANE
    assert default.excluded["cp"].narrowed
    assert "--include-control-plane" in default.excluded["cp"].reason
    assert "cp" in nodes.select_nodes(everyone, settings(include_control_plane=True)).names


def test_unknown_exclude_node_names_are_reported() -> None:
    picked = nodes.select_nodes([make_node("a")], settings(exclude_nodes=("a", "nod-2")))
    assert picked.unknown == ("nod-2",)
    assert picked.names == ()


@pytest.mark.parametrize(
    ("node", "evidence"),
    [
        (
            make_node("cni", ready=False, reason="KubeletNotReady", message=CNI_NOT_READY),
            [f"Ready=False (KubeletNotReady): {CNI_NOT_READY}"],
        ),
        (
            make_node("tainted", taints=[("node.kubernetes.io/not-ready", "NoSchedule")]),
            ["taint node.kubernetes.io/not-ready:NoSchedule"],
        ),
        (
            make_node("cloud", taints=[("node.kubernetes.io/network-unavailable", "NoSchedule")]),
            ["taint node.kubernetes.io/network-unavailable:NoSchedule"],
        ),
        (
            make_node("pleg", ready=False, reason="KubeletNotReady", message="PLEG is not healthy"),
            [],
        ),
        (make_node("fine"), []),
    ],
    ids=lambda value: value.metadata.name if isinstance(value, client.V1Node) else "",
)
def test_network_evidence_quotes_the_condition_and_taints(
    node: client.V1Node, evidence: list[str]
) -> None:
    assert list(nodes.network_evidence(node)) == evidence


def test_a_node_whose_network_is_not_ready_is_judged_not_accepted() -> None:
    cni = make_node(
        "cni",
        ready=False,
        reason="KubeletNotReady",
        message=CNI_NOT_READY,
        taints=[("node.kubernetes.io/not-ready", "NoExecute")],
    )
    # Ready, but the lifecycle controller has not lifted its taint yet (a run right after up).
    lingering = make_node("lingering", taints=[("node.kubernetes.io/not-ready", "NoSchedule")])
    picked = nodes.select_nodes(
        [cni, lingering, make_node("ok")], settings(allow_excluded=ALLOWABLE_EXCLUSIONS)
    )
    assert picked.names == ("ok",)
    assert kinds(picked) == {
        "cni": (nodes.NETWORK_NOT_READY, False),
        "lingering": (nodes.NETWORK_NOT_READY, False),
    }
    assert picked.waiting_on() == ("cni", "lingering")
    assert CNI_NOT_READY in picked.excluded["cni"].reason


def test_unaccounted_exclusions_are_those_no_failed_check_explains() -> None:
    excluded = {
        "cp": nodes.Exclusion(nodes.CONTROL_PLANE, "control plane", narrowed=True),
        "cni": nodes.Exclusion(nodes.NETWORK_NOT_READY, "network not ready"),
        "cni-unjudged": nodes.Exclusion(nodes.NETWORK_NOT_READY, "network not ready"),
        "win": nodes.Exclusion(nodes.WINDOWS, "OS is windows"),
        "win-ok": nodes.Exclusion(nodes.WINDOWS, "OS is windows", narrowed=True),
    }
    left = nodes.unaccounted(excluded, {"cni": {nodes.NETWORK_NOT_READY}, "win": {"other"}})
    assert sorted(left) == ["cni-unjudged", "win"]
    assert nodes.unaccounted({}, {}) == {}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("cordoned,sometimes", "sometimes is not one of"),
        (",", "is not one of"),
        ("network-not-ready", "network-not-ready is not one of"),
    ],
)
def test_allow_excluded_names_known_kinds_only(text: str, complaint: str) -> None:
    with pytest.raises(pytest.UsageError, match=complaint):
        parse_allow_excluded(text)
    assert parse_allow_excluded("Windows, cordoned,windows") == ("windows", "cordoned")


def test_exclude_node_takes_node_names() -> None:
    assert parse_exclude_node(" ip-10-0-0-5.internal ") == "ip-10-0-0-5.internal"
    with pytest.raises(pytest.UsageError, match="is not a node name"):
        parse_exclude_node("Bad_Name")
