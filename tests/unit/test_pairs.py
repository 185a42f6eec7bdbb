"""Pair planning: every ordered pair by default, same-node pairs on every node, replayable
samples in which every node is source and destination equally often, test IDs."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.cluster.pairs import (
    AUTO_SAMPLE_ABOVE,
    AUTO_SAMPLE_SIZE,
    NodePair,
    PairCheck,
    PairPlan,
    natural_key,
    pair_id,
    plan_checks,
    plan_node_pairs,
    plan_same_node_pairs,
)
from conformance.kit.run.cases import PAIRS_ALL, PAIRS_CROSS_NODE, pair_plan, plan_pairs

node_name_lists = st.lists(
    st.text(alphabet="abcxyz-0123456789", min_size=1, max_size=8), max_size=40
)


@given(node_name_lists)
def test_every_ordered_pair_by_default(names: list[str]) -> None:
    distinct = set(names)
    pairs = plan_node_pairs(names)
    assert {(p.src, p.dst) for p in pairs} == {(a, b) for a in distinct for b in distinct if a != b}
    assert len(pairs) == len(distinct) * (len(distinct) - 1)  # no duplicates
    assert all(not p.same_node for p in pairs)


@given(node_name_lists, st.randoms())
def test_plan_does_not_depend_on_input_order(names: list[str], rng: object) -> None:
    shuffled = list(names)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan_node_pairs(shuffled) == plan_node_pairs(names)
    plan = PairPlan(sample=2, seed=7)
    assert plan_node_pairs(shuffled, plan) == plan_node_pairs(names, plan)


@given(
    st.integers(min_value=2, max_value=60),
    st.integers(min_value=1, max_value=70),
    st.integers(min_value=0, max_value=2**31),
)
def test_a_sample_uses_every_node_k_times_each_way(nodes: int, k: int, seed: int) -> None:
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    pairs = plan_node_pairs(names, PairPlan(sample=k, seed=seed))
    per_node = min(k, nodes - 1)
    assert len(pairs) == nodes * per_node
    assert Counter(p.src for p in pairs) == dict.fromkeys(names, per_node)
    assert Counter(p.dst for p in pairs) == dict.fromkeys(names, per_node)
    assert all(not p.same_node for p in pairs)
    assert len(set(pairs)) == len(pairs)


def test_a_seed_replays_its_sample_and_another_differs() -> None:
    names = [f"node-{i}" for i in range(1, 51)]
    first = plan_node_pairs(names, PairPlan(sample=3, seed=11))
    assert plan_node_pairs(names, PairPlan(sample=3, seed=11)) == first
    assert plan_node_pairs(names, PairPlan(sample=3, seed=12)) != first


def test_auto_checks_every_pair_up_to_the_threshold_then_samples() -> None:
    assert pair_plan("auto", AUTO_SAMPLE_ABOVE, 5) == PairPlan(None, 5)
    assert pair_plan("auto", AUTO_SAMPLE_ABOVE + 1, 5) == PairPlan(AUTO_SAMPLE_SIZE, 5)
    assert pair_plan("all", 500, 5) == PairPlan(None, 5)
    assert pair_plan("sample:3", 4, 9) == PairPlan(3, 9)


def test_descriptions_say_how_many_of_how_many_and_how_to_replay() -> None:
    assert PairPlan(None, 1).describe(3) == (
        "every ordered node pair: 6 cross-node pairs of 3 nodes"
    )
    text = PairPlan(2, 42).describe(10)
    assert "sampled 20 of 90 cross-node pairs" in text
    assert "--pairs sample:2 --pairs-seed 42" in text
    # A sample as large as the whole is the whole.
    assert PairPlan(9, 1).describe(10).startswith("every ordered node pair")


def test_small_plans_and_natural_order() -> None:
    assert plan_node_pairs([]) == []
    assert plan_node_pairs(["node-1"]) == []
    assert [p.id("tcp") for p in plan_node_pairs(["node-10", "node-2", "node-1"])] == [
        "tcp-node-1->node-2",
        "tcp-node-1->node-10",
        "tcp-node-2->node-1",
        "tcp-node-2->node-10",
        "tcp-node-10->node-1",
        "tcp-node-10->node-2",
    ]


def test_natural_order_and_ties_are_total() -> None:
    assert sorted(["n-10", "n-9", "n-1"], key=natural_key) == ["n-1", "n-9", "n-10"]
    assert plan_node_pairs(["node-1", "node-01"]) == plan_node_pairs(["node-01", "node-1"])


def test_same_node_pairs_on_every_node() -> None:
    assert [p.id("udp") for p in plan_same_node_pairs(["node-3", "node-1", "node-2"])] == [
        "udp-node-1->node-1",
        "udp-node-2->node-2",
        "udp-node-3->node-3",
    ]


def test_a_checks_pairs_group_by_source_with_its_same_node_pair_first() -> None:
    nodes = ["node-1", "node-2", "node-3"]
    every = [f"{p.src}->{p.dst}" for p in plan_pairs(nodes, PairPlan(), PAIRS_ALL)]
    assert every == [
        "node-1->node-1",
        "node-1->node-2",
        "node-1->node-3",
        "node-2->node-2",
        "node-2->node-1",
        "node-2->node-3",
        "node-3->node-3",
        "node-3->node-1",
        "node-3->node-2",
    ]
    cross = plan_pairs(nodes, PairPlan(), PAIRS_CROSS_NODE)
    assert len(cross) == 6
    assert all(not p.same_node for p in cross)


def test_checks_and_ids() -> None:
    pairs = plan_node_pairs(["node-1", "node-2", "node-3"])
    checks = plan_checks(["tcp", "udp"], pairs)
    assert len(checks) == 12
    assert checks[0] == PairCheck("tcp", NodePair("node-1", "node-2"))
    assert checks[-1].id == "udp-node-3->node-2"
    assert pair_id("udp", "node-1", "node-2") == "udp-node-1->node-2"


def test_empty_node_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_node_pairs(["node-1", ""])
