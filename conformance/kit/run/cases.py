"""The parametrization of the checks: which (family, protocol, node or node pair) cases a
check has on the discovered cluster, and their test IDs. Pure; the plugin's
``pytest_generate_tests`` hands the result to ``metafunc.parametrize``."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.pairs import (
    AUTO_SAMPLE_ABOVE,
    AUTO_SAMPLE_SIZE,
    NodePair,
    PairPlan,
    natural_key,
    plan_checks,
    plan_node_pairs,
    plan_same_node_pairs,
)
from conformance.kit.verdicts.failures import Place

DEFAULT_PROTOCOLS = ("tcp", "udp", "icmp")
#: A check's ``PAIRS``: every ordered pair and every node with itself, or cross-node only.
PAIRS_ALL = "all"
PAIRS_CROSS_NODE = "cross-node"
#: What a check's places are, read from the check function, else from its module (``PROTOCOLS``,
#: ``PAIRS``, ``SOURCE_KIND``), else the defaults.
PLACE_ATTRIBUTES = ("PROTOCOLS", "PAIRS", "SOURCE_KIND")

Check = TypeVar("Check", bound=Callable[..., Any])


def check_places(
    *,
    protocols: Sequence[str] | None = None,
    pairs: str | None = None,
    source_kind: str | None = None,
) -> Callable[[Check], Check]:
    """Give one check of a module its own ``PROTOCOLS``, ``PAIRS`` or ``SOURCE_KIND`` (a module
    holding checks from pods and from host networks)."""

    def mark(check: Check) -> Check:
        for name, value in (
            ("PROTOCOLS", protocols),
            ("PAIRS", pairs),
            ("SOURCE_KIND", source_kind),
        ):
            if value is not None:
                setattr(check, name, tuple(value) if name == "PROTOCOLS" else value)
        return check

    return mark


def place_attribute(function: Any, module: Any, name: str, default: Any) -> Any:
    """A check's ``name`` (one of `PLACE_ATTRIBUTES`): the function's, else its module's."""
    return getattr(function, name, getattr(module, name, default))


def pair_plan(option: str, node_count: int, seed: int) -> PairPlan:
    """The run's `PairPlan` from ``--pairs`` (all, auto, sample:K) and the node count."""
    if option == "all":
        return PairPlan(None, seed)
    if option == "auto":
        return PairPlan(AUTO_SAMPLE_SIZE if node_count > AUTO_SAMPLE_ABOVE else None, seed)
    return PairPlan(int(option.split(":", 1)[1]), seed)


def plan_pairs(nodes: Sequence[str], plan: PairPlan, scope: str = PAIRS_ALL) -> list[NodePair]:
    """The node pairs of a check, by source then destination (same-node first for a source)."""
    pairs = plan_node_pairs(nodes, plan)
    if scope == PAIRS_ALL:
        pairs += plan_same_node_pairs(nodes)
    return sorted(
        pairs, key=lambda p: (natural_key(p.src), p.src, p.src != p.dst, natural_key(p.dst), p.dst)
    )


Case = tuple[dict[str, Any], str]


def plan_cases(
    fixturenames: Collection[str],
    protocols: Sequence[str] | None,
    discovery: Discovery,
    plan: PairPlan,
    pairs_scope: str = PAIRS_ALL,
) -> list[Case]:
    """Every (fixture values, test ID) of one check, in a stable order.

    IDs read like the place: ``udp-node-1->node-2`` (pairs), ``tcp-node-1`` (per node). The
    family leads the ID (``ipv6-tcp-node-1->node-2``) whenever the tested families are not
    IPv4 only, so IPv4-only clusters keep the IDs existing expectations use.
    """
    protos = tuple(protocols or DEFAULT_PROTOCOLS)
    cases: list[Case] = [({}, "")]

    def extend(axis: list[Case]) -> None:
        nonlocal cases
        cases = [
            ({**values, **more}, "-".join(p for p in (ident, part) if p))
            for values, ident in cases
            for more, part in axis
        ]

    if "family" in fixturenames:
        families = tuple(discovery.families)
        show = families != (4,)
        extend([({"family": f}, f"ipv{f}" if show else "") for f in families])
    if "node_pair" in fixturenames:
        pairs = plan_pairs(discovery.nodes, plan, pairs_scope)
        if "proto" in fixturenames:
            extend(
                [
                    ({"proto": c.proto, "node_pair": c.pair}, c.id)
                    for c in plan_checks(protos, pairs)
                ]
            )
        else:
            extend([({"node_pair": p}, f"{p.src}->{p.dst}") for p in pairs])
    elif "proto" in fixturenames:
        extend([({"proto": p}, p) for p in protos])
    if "probe_node" in fixturenames:
        extend([({"probe_node": n}, n) for n in discovery.nodes])
    if "cluster_node" in fixturenames:
        # Checks made through the API alone: every node the user asked for, tested or not.
        extend([({"cluster_node": n}, n) for n in discovery.checked])
    return cases


def item_place(check: str, params: dict[str, Any], source_kind: str = "pod") -> Place:
    """Where one test item looks (`Place`), from its parameters: its family (``ipv4``),
    protocol, the ``node_pair``'s source and destination (equal for same-node pairs), the node
    of a per-node check (``probe_node`` or ``cluster_node``) and, for pairs and host-network
    per-node checks, the ``source_kind`` (``pod`` or ``host``: the host network of the source
    node)."""
    pair = params.get("node_pair")
    node = params.get("cluster_node")
    if params.get("probe_node") is not None:
        node = params["probe_node"]
    source = destination = kind = None
    if pair is not None:
        source, destination, kind = pair.src, pair.dst, source_kind
    elif params.get("probe_node") is not None and source_kind == "host":
        source = destination = str(params["probe_node"])
        kind = source_kind
    return Place(
        check=check,
        family=f"ipv{params['family']}" if params.get("family") is not None else None,
        protocol=str(params["proto"]) if params.get("proto") is not None else None,
        node=str(node) if node is not None else None,
        source=source,
        destination=destination,
        source_kind=kind,
    )
