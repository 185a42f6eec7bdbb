"""Which nodes a run tests, and why each other node is not tested.

A node is left out either because the user narrowed the run (``--node-selector``,
``--exclude-node``, ``--max-nodes``, control-plane nodes without ``--include-control-plane``,
and whatever ``--allow-excluded`` accepts) or on the suite's own judgement (not a Linux node,
not Ready, a NoExecute taint the probes do not tolerate, a network that is not ready). Every
exclusion is an `Exclusion` with a kind and a reason; one the user did not ask for makes the run
exit 2 (`unaccounted`), unless a broken rule accounts for it: a node whose network is not ready
fails ``test_node_network_ready`` (exit 1).

Probes are pinned to their node by ``spec.nodeName``, which bypasses the scheduler, and kubelet
admits such pods against NoExecute taints only (``pkg/kubelet/lifecycle/predicate.go``: "Kubelet
is only interested in the NoExecute taint"): cordoned nodes and nodes with NoSchedule taints are
tested unless ``--allow-excluded cordoned,noschedule`` leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kubernetes import client

from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.settings import CONTROL_PLANE_TAINT_KEYS, Settings, TaintToleration

# Exclusion kinds. The user's narrowing:
BY_NAME = "exclude-node"
NOT_SELECTED = "node-selector"
BEYOND_MAX = "max-nodes"
CONTROL_PLANE = "control-plane"
# The suite's judgement (``--allow-excluded`` accepts the first four):
WINDOWS = "windows"
NOT_LINUX = "not-linux"
NOT_READY = "not-ready"
NOEXECUTE = "noexecute"
NETWORK_NOT_READY = "network-not-ready"
# Tested by default; left out (as narrowing) only when ``--allow-excluded`` names them:
CORDONED = "cordoned"
NOSCHEDULE = "noschedule"

#: Kinds the node network check judges: such a node fails ``test_node_network_ready`` (or, when
#: its kubelet stopped reporting, could not test there) instead of going unnamed.
READINESS_KINDS = frozenset({NETWORK_NOT_READY, NOT_READY})

#: Taints the node lifecycle controller (and cloud providers, for network-unavailable) put on a
#: node whose Ready condition is False or whose network is not set up.
NETWORK_TAINT_KEYS = ("node.kubernetes.io/network-unavailable", "node.kubernetes.io/not-ready")
#: What kubelet writes into the Ready condition when the runtime's NetworkReady condition is
#: false (``container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady
#: message:...``, pkg/kubelet/kubelet.go updateRuntimeUp).
NETWORK_NOT_READY_MARKS = ("NetworkReady=false", "NetworkPluginNotReady", "network not ready")
BLOCKING_TAINT_EFFECTS = ("NoSchedule", "NoExecute")


def _name(node: client.V1Node) -> str:
    meta = node.metadata
    return str(meta.name) if meta is not None and meta.name else ""


def _labels(node: client.V1Node) -> dict[str, str]:
    meta = node.metadata
    return dict(meta.labels or {}) if meta is not None else {}


def _taints(node: client.V1Node) -> list[client.V1Taint]:
    return list((node.spec.taints if node.spec else None) or [])


@dataclass(frozen=True)
class Exclusion(JSONData):
    """Why one node is not tested: its ``kind`` (one of the constants above), a ``reason`` for
    people, and whether the user ``narrowed`` the run so (their option, a documented default,
    or accepted with ``--allow-excluded``)."""

    kind: str
    reason: str
    narrowed: bool = False

    def describe(self) -> str:
        """``not Ready (Ready=Unknown ...)``, with who decided when it was the user."""
        return f"{self.reason} (narrowed: {self.kind})" if self.narrowed else self.reason


# --- what a Node object says ------------------------------------------------------------------


def ready_condition(node: client.V1Node) -> client.V1NodeCondition | None:
    """The node's Ready condition (None when it reports none)."""
    for condition in (node.status.conditions if node.status else None) or []:
        if condition.type == "Ready":
            return condition
    return None


def node_is_ready(node: client.V1Node) -> bool:
    """The node's Ready condition is True."""
    condition = ready_condition(node)
    return condition is not None and condition.status == "True"


def describe_ready(node: client.V1Node) -> str:
    """The Ready condition as ``kubectl describe`` shows it: ``Ready=False (KubeletNotReady):
    container runtime network not ready: ...``."""
    condition = ready_condition(node)
    if condition is None:
        return "no Ready condition"
    text = f"Ready={condition.status}"
    if condition.reason:
        text += f" ({condition.reason})"
    return f"{text}: {condition.message}" if condition.message else text


def network_evidence(node: client.V1Node) -> tuple[str, ...]:
    """What says the node's network is not ready, quoted: a Ready condition that is not True
    and names the runtime's ``NetworkReady=false`` / ``NetworkPluginNotReady``, and the
    ``network-unavailable`` and ``not-ready`` taints. Empty when nothing does."""
    found: list[str] = []
    condition = ready_condition(node)
    if condition is not None and condition.status != "True":
        said = f"{condition.reason or ''} {condition.message or ''}"
        if any(mark.lower() in said.lower() for mark in NETWORK_NOT_READY_MARKS):
            found.append(describe_ready(node))
    for taint in _taints(node):
        if taint.key in NETWORK_TAINT_KEYS:
            found.append(f"taint {taint.key}:{taint.effect}")
    return tuple(found)


def node_os(node: client.V1Node) -> str:
    """The node's OS from its ``kubernetes.io/os`` label or node info (``linux`` assumed)."""
    labels = _labels(node)
    if "kubernetes.io/os" in labels:
        return str(labels["kubernetes.io/os"])
    info = node.status.node_info if node.status else None
    return str(info.operating_system) if info and info.operating_system else "linux"


def untolerated_taints(
    node: client.V1Node, tolerations: Sequence[TaintToleration], effects: Sequence[str]
) -> list[client.V1Taint]:
    """The node's taints of ``effects`` that none of ``tolerations`` matches."""
    return [
        t
        for t in _taints(node)
        if t.effect in effects
        and not any(tol.tolerates(str(t.key), str(t.effect)) for tol in tolerations)
    ]


def _shown(taints: Sequence[client.V1Taint]) -> str:
    return ", ".join(f"{t.key}:{t.effect}" for t in taints)


# --- choosing ---------------------------------------------------------------------------------


def exclusion_of(node: client.V1Node, settings: Settings) -> Exclusion | None:
    """Why ``node`` is not tested under ``settings``; None when it is. The first reason wins,
    the user's narrowing before the suite's judgement."""
    allowed = set(settings.allow_excluded)
    name = _name(node)
    if name in settings.exclude_nodes:
        return Exclusion(BY_NAME, "--exclude-node", narrowed=True)
    labels = _labels(node)
    for key, value in settings.node_selector.items():
        if labels.get(key) != value:
            return Exclusion(NOT_SELECTED, f"does not match --node-selector {key}={value}", True)
    control_plane = [
        t
        for t in untolerated_taints(node, settings.tolerations, BLOCKING_TAINT_EFFECTS)
        if t.key in CONTROL_PLANE_TAINT_KEYS
    ]
    if control_plane:
        return Exclusion(
            CONTROL_PLANE,
            f"control-plane node, tainted {_shown(control_plane)} (--include-control-plane "
            "tests it)",
            narrowed=True,
        )
    os_name = node_os(node)
    if os_name != "linux":
        kind = WINDOWS if os_name == "windows" else NOT_LINUX
        return Exclusion(
            kind,
            f"OS is {os_name}, not linux (the probes are Linux containers)",
            narrowed=kind in allowed,
        )
    evidence = network_evidence(node)
    if evidence:
        return Exclusion(NETWORK_NOT_READY, "network not ready: " + "; ".join(evidence))
    if not node_is_ready(node):
        return Exclusion(
            NOT_READY, f"not Ready ({describe_ready(node)})", narrowed=NOT_READY in allowed
        )
    noexecute = untolerated_taints(node, settings.tolerations, ("NoExecute",))
    if noexecute:
        advice = " ".join(f"--tolerate-taint {t.key}:{t.effect}" for t in noexecute)
        return Exclusion(
            NOEXECUTE,
            f"tainted {_shown(noexecute)}, which evicts the probes ({advice} tests it)",
            narrowed=NOEXECUTE in allowed,
        )
    if node.spec is not None and node.spec.unschedulable and CORDONED in allowed:
        return Exclusion(CORDONED, "cordoned (spec.unschedulable)", narrowed=True)
    noschedule = untolerated_taints(node, settings.tolerations, ("NoSchedule",))
    if noschedule and NOSCHEDULE in allowed:
        return Exclusion(NOSCHEDULE, f"tainted {_shown(noschedule)}", narrowed=True)
    return None


@dataclass(frozen=True)
class NodeSelection:
    """The nodes the suite will probe, in name order, and why every other node was left out;
    ``unknown`` lists the ``--exclude-node`` names no node carries."""

    selected: tuple[client.V1Node, ...]
    excluded: dict[str, Exclusion] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(_name(n) for n in self.selected)

    def waiting_on(self) -> tuple[str, ...]:
        """The nodes left out because they (or their network) are not ready yet."""
        return tuple(n for n, e in self.excluded.items() if e.kind in READINESS_KINDS)

    def explain(self) -> str:
        """One line for every excluded node, for skip and error messages."""
        return explain(self.excluded)


def explain(excluded: Mapping[str, Exclusion]) -> str:
    if not excluded:
        return "no nodes were excluded"
    return "; ".join(f"{name}: {why.describe()}" for name, why in sorted(excluded.items()))


def select_nodes(nodes: Iterable[client.V1Node], settings: Settings) -> NodeSelection:
    """The nodes to test, sorted by name and capped by ``--max-nodes``, with every exclusion."""
    eligible: list[client.V1Node] = []
    excluded: dict[str, Exclusion] = {}
    everyone = sorted(nodes, key=_name)
    for node in everyone:
        why = exclusion_of(node, settings)
        if why is None:
            eligible.append(node)
        else:
            excluded[_name(node)] = why
    if settings.max_nodes is not None:
        for node in eligible[settings.max_nodes :]:
            excluded[_name(node)] = Exclusion(
                BEYOND_MAX, f"beyond --max-nodes {settings.max_nodes}", narrowed=True
            )
        eligible = eligible[: settings.max_nodes]
    names = {_name(n) for n in everyone}
    unknown = tuple(n for n in settings.exclude_nodes if n not in names)
    return NodeSelection(selected=tuple(eligible), excluded=excluded, unknown=unknown)


def unaccounted(
    excluded: Mapping[str, Exclusion], accounted: Mapping[str, Iterable[str]]
) -> dict[str, Exclusion]:
    """The exclusions that make a run exit 2: every one the user did not ask for, except those
    a failed check accounts for (``accounted``: node -> the exclusion kinds its failed checks
    judge, such as ``test_node_network_ready`` for a node whose network is not ready)."""
    return {
        name: why
        for name, why in sorted(excluded.items())
        if not why.narrowed and why.kind not in set(accounted.get(name, ()))
    }
