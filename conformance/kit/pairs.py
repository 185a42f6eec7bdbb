"""Pure pair planning: which node talks to which, so the checks cost O(nodes), not O(nodes²).

Cross-node checks use a ring over the nodes in natural name order (node-2 before node-10):
each node is the source once and the destination once. Same-node checks need a second
pod-network probe on the node (the ``peer-<node>`` pod), so they are planned only where the
caller says one exists.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: node-2 < node-10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name) if part
    )


def _order(name: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    # The name breaks ties between names equal by value (node-01, node-1): order stays total.
    return natural_key(name), name


def pair_id(proto: str, src: str, dst: str) -> str:
    """The test ID of one directed check, e.g. ``udp-node-1->node-2``."""
    return f"{proto}-{src}->{dst}"


@dataclass(frozen=True)
class NodePair:
    """A directed pair of nodes: traffic goes from ``src`` to ``dst`` (equal for same-node)."""

    src: str
    dst: str

    @property
    def same_node(self) -> bool:
        return self.src == self.dst

    def id(self, proto: str) -> str:
        """Test ID for this pair and protocol."""
        return pair_id(proto, self.src, self.dst)


@dataclass(frozen=True)
class PairCheck:
    """One parametrized check: a protocol over a directed node pair."""

    proto: str
    pair: NodePair

    @property
    def id(self) -> str:
        return self.pair.id(self.proto)


def ordered_nodes(nodes: Iterable[str]) -> list[str]:
    """Distinct node names in natural order; ``ValueError`` on an empty name."""
    distinct = set(nodes)
    if "" in distinct:
        raise ValueError("a node name is empty")
    return sorted(distinct, key=_order)


def plan_node_pairs(nodes: Sequence[str]) -> list[NodePair]:
    """Cross-node ring: n1->n2, n2->n3, ..., nk->n1 in natural order.

    Every node is the source of exactly one pair and the destination of exactly one, so the
    count equals the number of distinct nodes (two nodes: both directions; one node: none).
    """
    ring = ordered_nodes(nodes)
    if len(ring) < 2:
        return []
    return [NodePair(src, ring[(index + 1) % len(ring)]) for index, src in enumerate(ring)]


def plan_same_node_pairs(
    nodes: Sequence[str], nodes_with_second_probe: Collection[str]
) -> list[NodePair]:
    """Same-node pairs (``NodePair(n, n)``) for every node that has a second pod-network probe.

    ``ValueError`` when a node with a second probe is not among ``nodes``: that would be a
    planning bug, and silently testing fewer nodes would hide it.
    """
    ordered = ordered_nodes(nodes)
    unknown = sorted(set(nodes_with_second_probe) - set(ordered), key=_order)
    if unknown:
        raise ValueError(f"nodes with a second probe are not selected nodes: {unknown}")
    return [NodePair(node, node) for node in ordered if node in nodes_with_second_probe]


def plan_checks(protos: Sequence[str], pairs: Sequence[NodePair]) -> list[PairCheck]:
    """Every protocol over every pair, grouped by protocol (stable order for test IDs)."""
    return [PairCheck(proto, pair) for proto in protos for pair in pairs]
