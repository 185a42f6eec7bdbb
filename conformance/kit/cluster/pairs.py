"""Pure pair planning: which node talks to which.

The rules say "all pods on all nodes", so by default every ordered pair of tested nodes is a
pair (N*(N-1) cross-node pairs) and every node is a same-node pair with itself. The cost stays
O(N) in round trips and pods because a source probes all its destinations inside one agent
call, not because pairs are left out.

On huge clusters a run may sample instead (`PairPlan` with ``sample``): K random offsets over
a random order of the nodes, so every node is the source of exactly K pairs and the
destination of exactly K; the choice comes from a seed that is printed and recorded, and the
same seed replays the same pairs. Node names order naturally (node-2 before node-10).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_DIGITS = re.compile(r"(\d+)")

#: ``--pairs auto`` checks every pair up to this many nodes, and samples above.
AUTO_SAMPLE_ABOVE = 40
#: Pairs per node (as source and as destination) when ``auto`` samples.
AUTO_SAMPLE_SIZE = 20


@functools.lru_cache(maxsize=1 << 14)
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


@dataclass(frozen=True)
class PairPlan:
    """How a run picks its cross-node pairs: all of them (``sample`` None) or ``sample`` pairs
    per node, from ``seed``."""

    sample: int | None = None
    seed: int = 0

    def describe(self, nodes: int) -> str:
        """For the terminal summary: how many pairs of how many, and how to replay."""
        possible = nodes * (nodes - 1)
        if self.sample is None or self.sample >= nodes - 1:
            return f"every ordered node pair: {possible} cross-node pairs of {nodes} nodes"
        return (
            f"sampled {nodes * self.sample} of {possible} cross-node pairs ({self.sample} per "
            f"node as source and as destination), seed {self.seed}; replay with "
            f"--pairs sample:{self.sample} --pairs-seed {self.seed}"
        )


def ordered_nodes(nodes: Iterable[str]) -> list[str]:
    """Distinct node names in natural order; ``ValueError`` on an empty name."""
    distinct = set(nodes)
    if "" in distinct:
        raise ValueError("a node name is empty")
    return sorted(distinct, key=_order)


def plan_node_pairs(nodes: Sequence[str], plan: PairPlan | None = None) -> list[NodePair]:
    """Cross-node pairs in natural order (by source, then destination): every ordered pair, or
    the sample ``plan`` asks for (each node the source of ``sample`` pairs and the destination
    of ``sample``)."""
    ordered = ordered_nodes(nodes)
    if len(ordered) < 2:
        return []
    if plan is None or plan.sample is None or plan.sample >= len(ordered) - 1:
        return [NodePair(src, dst) for src in ordered for dst in ordered if src != dst]
    chooser = random.Random(plan.seed)  # a replayable choice, not a secret
    shuffled = list(ordered)
    chooser.shuffle(shuffled)
    offsets = chooser.sample(range(1, len(shuffled)), plan.sample)
    chosen = {
        NodePair(shuffled[i], shuffled[(i + offset) % len(shuffled)])
        for i in range(len(shuffled))
        for offset in offsets
    }
    return sorted(chosen, key=lambda p: (_order(p.src), _order(p.dst)))


def plan_same_node_pairs(nodes: Sequence[str]) -> list[NodePair]:
    """``NodePair(n, n)`` for every node (each node carries a second pod-network probe)."""
    return [NodePair(node, node) for node in ordered_nodes(nodes)]


def plan_checks(protos: Sequence[str], pairs: Sequence[NodePair]) -> list[PairCheck]:
    """Every protocol over every pair, grouped by protocol (stable order for test IDs)."""
    return [PairCheck(proto, pair) for proto in protos for pair in pairs]
