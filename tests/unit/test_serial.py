"""`conformance.kit.base.jsondata.JSONData`: one idiom for the kit's dataclasses. ``to_dict`` is ready
for ``json.dumps`` (tuples as lists, nested data as mappings) and ``from_dict`` of its JSON
gives the object back, whatever the nesting: optionals, tuples of data, mappings of data,
plain JSON values; missing fields take their defaults."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.base.jsondata import JSONData
from conformance.kit.exchanges.reachability import (
    Endpoint,
    Exchange,
    ItemPlan,
    Outcome,
    Sweep,
    Target,
    Unplanned,
)


@dataclass(frozen=True)
class Leaf(JSONData):
    name: str
    weight: float = 0.0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Branch(JSONData):
    leaf: Leaf
    maybe_leaf: Leaf | None = None
    leaves: tuple[Leaf, ...] = ()
    by_name: Mapping[str, Leaf] = field(default_factory=dict)
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    count: int | None = None
    span: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Tree(JSONData):
    branches: tuple[Branch, ...] = ()
    maybe_branches: Mapping[str, Branch | None] = field(default_factory=dict)
    maybe_leaves: tuple[Leaf, ...] | None = None


names = st.text(max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=10,
)
leaves = st.builds(
    Leaf,
    name=names,
    # Whole numbers too: JSON writes 2.0 as 2.0, but a float field must take 2 as 2.0.
    weight=st.floats(allow_nan=False, allow_infinity=False) | st.integers().map(float),
    tags=st.lists(names, max_size=3).map(tuple),
)
branches = st.builds(
    Branch,
    leaf=leaves,
    maybe_leaf=st.none() | leaves,
    leaves=st.lists(leaves, max_size=3).map(tuple),
    by_name=st.dictionaries(names, leaves, max_size=3),
    groups=st.dictionaries(names, st.lists(st.integers(), max_size=3).map(tuple), max_size=3),
    raw=st.dictionaries(names, json_values, max_size=3),
    count=st.none() | st.integers(),
    span=st.tuples(st.integers(), st.integers()),
)
trees = st.builds(
    Tree,
    branches=st.lists(branches, max_size=3).map(tuple),
    maybe_branches=st.dictionaries(names, st.none() | branches, max_size=3),
    maybe_leaves=st.none() | st.lists(leaves, max_size=3).map(tuple),
)


def through_json(data: JSONData) -> Any:
    return json.loads(json.dumps(data.to_dict(), allow_nan=False))


@given(trees)
def test_nested_data_round_trips_through_json(tree: Tree) -> None:
    assert Tree.from_dict(through_json(tree)) == tree


@given(trees)
def test_to_dict_is_plain_json(tree: Tree) -> None:
    # No tuples, no dataclasses: what json.loads gives back equals what to_dict gave.
    assert through_json(tree) == tree.to_dict()


def test_whole_numbers_come_back_as_floats() -> None:
    again = Leaf.from_dict({"name": "a", "weight": 2})
    assert again == Leaf("a", 2.0)
    assert isinstance(again.weight, float)


def test_missing_fields_take_their_defaults_and_unknown_ones_are_ignored() -> None:
    assert Branch.from_dict({"leaf": {"name": "x"}}) == Branch(Leaf("x"))
    assert Leaf.from_dict({"name": "x", "added_later": 1}) == Leaf("x")


@pytest.mark.parametrize("raw", [["not", "a", "mapping"], "text"])
def test_from_dict_refuses_what_is_not_a_mapping(raw: Any) -> None:
    with pytest.raises(TypeError):
        Tree.from_dict(raw)


endpoints = st.builds(Endpoint, pod=names, container=st.sampled_from(["a", "b"]), node=names)
addresses = st.lists(st.ip_addresses().map(str), max_size=3).map(tuple)
targets = st.builds(
    Target,
    check=st.sampled_from(["test_no_snat", "test_node_to_pod"]),
    proto=st.sampled_from(["tcp", "udp", "icmp"]),
    family=st.sampled_from([4, 6]),
    source=endpoints,
    destination=endpoints,
    host=st.ip_addresses().map(str),
    port=st.none() | st.integers(1, 65535),
    capture=st.booleans(),
    allowed_sources=st.none() | addresses,
    source_is_node=st.booleans(),
)
exchanges = st.builds(
    Exchange,
    attempts=st.integers(0, 5),
    client_response=st.dictionaries(names, json_values, max_size=3),
    listener_peers=addresses,
    captured_sources=addresses,
    capture_error=st.none() | names,
)
outcomes = st.builds(
    Outcome,
    target=targets,
    nonce=names,
    attempts=st.integers(0, 5),
    exchange=st.none() | exchanges,
    first_error=st.none() | names,
    error=st.none() | names,
    max_attempts=st.integers(1, 5),
    allowed_sources=st.none() | addresses,
)
item_plans = st.builds(
    ItemPlan,
    nodeid=names,
    keys=st.lists(names, max_size=3).map(tuple),
    unplanned=st.none() | st.builds(Unplanned, reason=names, broken=st.booleans()),
)


@given(st.dictionaries(names, item_plans, max_size=3), st.lists(outcomes, max_size=4))
def test_a_sweep_round_trips_through_json(plans: dict[str, ItemPlan], found: list[Outcome]) -> None:
    sweep = Sweep(items=plans, outcomes={o.target.key: o for o in found})
    assert Sweep.from_dict(through_json(sweep)) == sweep
