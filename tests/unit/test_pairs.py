"""Pair planning: the ring's coverage and cost, same-node pairs, test IDs."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.pairs import (
    NodePair,
    PairCheck,
    natural_key,
    pair_id,
    plan_checks,
    plan_node_pairs,
    plan_same_node_pairs,
)

node_name_lists = st.lists(
    st.text(alphabet="abcxyz-0123456789", min_size=1, max_size=8), max_size=40
)


@given(node_name_lists)
def test_ring_uses_every_node_once_as_source_and_once_as_destination(names: list[str]) -> None:
    distinct = set(names)
    pairs = plan_node_pairs(names)
    if len(distinct) < 2:
        assert pairs == []
        return
    assert len(pairs) == len(distinct)  # linear cost: one pair per node
    assert Counter(p.src for p in pairs) == Counter(distinct)
    assert Counter(p.dst for p in pairs) == Counter(distinct)
    assert all(not p.same_node for p in pairs)


@given(node_name_lists)
def test_ring_is_one_cycle(names: list[str]) -> None:
    pairs = plan_node_pairs(names)
    if not pairs:
        return
    successor = {p.src: p.dst for p in pairs}
    node, visited = pairs[0].src, []
    for _ in range(len(pairs)):
        visited.append(node)
        node = successor[node]
    assert node == pairs[0].src
    assert len(set(visited)) == len(pairs)


@given(node_name_lists, st.randoms())
def test_ring_does_not_depend_on_input_order(names: list[str], rng: object) -> None:
    shuffled = list(names)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan_node_pairs(shuffled) == plan_node_pairs(names)


def test_small_rings() -> None:
    assert plan_node_pairs([]) == []
    assert plan_node_pairs(["node-1"]) == []
    assert plan_node_pairs(["node-2", "node-1"]) == [
        NodePair("node-1", "node-2"),
        NodePair("node-2", "node-1"),
    ]
    assert [p.id("tcp") for p in plan_node_pairs(["node-10", "node-2", "node-1"])] == [
        "tcp-node-1->node-2",
        "tcp-node-2->node-10",
        "tcp-node-10->node-1",
    ]


def test_natural_order_and_ties_are_total() -> None:
    assert sorted(["n-10", "n-9", "n-1"], key=natural_key) == ["n-1", "n-9", "n-10"]
    assert plan_node_pairs(["node-1", "node-01"]) == plan_node_pairs(["node-01", "node-1"])


def test_same_node_pairs_only_where_a_second_probe_exists() -> None:
    nodes = ["node-3", "node-1", "node-2"]
    assert plan_same_node_pairs(nodes, {"node-1"}) == [NodePair("node-1", "node-1")]
    assert plan_same_node_pairs(nodes, set()) == []
    assert [p.id("udp") for p in plan_same_node_pairs(nodes, ["node-2", "node-1"])] == [
        "udp-node-1->node-1",
        "udp-node-2->node-2",
    ]
    with pytest.raises(ValueError, match="node-9"):
        plan_same_node_pairs(nodes, {"node-9"})


def test_checks_and_ids() -> None:
    pairs = plan_node_pairs(["node-1", "node-2", "node-3"])
    checks = plan_checks(["tcp", "udp"], pairs)
    assert len(checks) == 6
    assert checks[0] == PairCheck("tcp", NodePair("node-1", "node-2"))
    assert checks[-1].id == "udp-node-3->node-1"
    assert pair_id("udp", "node-1", "node-2") == "udp-node-1->node-2"


def test_empty_node_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_node_pairs(["node-1", ""])
