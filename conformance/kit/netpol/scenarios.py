"""The family's scenarios: the upstream Netpol e2e's semantics in our own words, each a list of
steps; a step changes the cluster (applies, replaces or deletes policies, labels a pod or a
namespace) and says which cells are then allowed. Every cell not allowed must be denied. Pure:
specs are built from the `Model` (ipBlocks need the pods' addresses).

What is allowed follows the API documentation (networking.k8s.io/v1): a pod no policy selects
for a direction is open in that direction; policies selecting a pod are a union; a peer's
podSelector and namespaceSelector are ANDed, peers ORed; policyTypes default to Ingress, plus
Egress when the policy has egress rules; replies to allowed connections are allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.kit.netpol.model import (
    NS_LABEL,
    POD_LABEL,
    Cell,
    Model,
    ModelPod,
    Probe,
    port_name,
)

#: allowed(source, destination, probe): whether the policies allow the cell.
Allowed = Callable[[ModelPod, ModelPod, Probe], bool]
Spec = Callable[[Model], dict[str, Any]]


@dataclass(frozen=True)
class ApplyPolicy:
    """Create or replace policy ``name`` in model namespace ``namespace``."""

    namespace: str
    name: str
    spec: Spec

    def text(self, model: Model) -> str:
        return f"{self.namespace}/{self.name} {self.spec(model)}"


@dataclass(frozen=True)
class DeletePolicy:
    namespace: str
    name: str

    def text(self, model: Model) -> str:
        return f"delete {self.namespace}/{self.name}"


@dataclass(frozen=True)
class LabelPod:
    """Add labels (new keys, removed when the scenario ends) to pod ``pod`` (``x/c``)."""

    pod: str
    labels: Mapping[str, str | None]

    def text(self, model: Model) -> str:
        return f"label pod {self.pod} {dict(self.labels)}"


@dataclass(frozen=True)
class LabelNamespace:
    """Add labels (new keys, removed when the scenario ends) to model namespace ``namespace``."""

    namespace: str
    labels: Mapping[str, str | None]

    def text(self, model: Model) -> str:
        return f"label namespace {self.namespace} {dict(self.labels)}"


Action = ApplyPolicy | DeletePolicy | LabelPod | LabelNamespace


@dataclass(frozen=True)
class Step:
    name: str
    actions: tuple[Action, ...]
    allowed: Allowed


@dataclass(frozen=True)
class Scenario:
    """One check: its id, the rule it proves (a MUST), the ports and protocols its cells probe,
    and its steps in order."""

    def pods_named(self) -> tuple[str, ...]:
        """The model pods its steps change by name (``x/c``): a cluster of fewer nodes than the
        pod's position has no such pod."""
        return tuple(
            dict.fromkeys(
                action.pod
                for step in self.steps
                for action in step.actions
                if isinstance(action, LabelPod)
            )
        )

    id: str
    rule: str
    steps: tuple[Step, ...]
    ports: tuple[int, ...] = (8080,)
    protocols: tuple[str, ...] = ("tcp", "udp")
    #: Why every node matters here (for the person reading the report), optional.
    note: str = field(default="")

    def expected(self, model: Model, step: Step) -> dict[Cell, bool]:
        cells = model.cells(model.probes(self.ports, self.protocols))
        return {
            cell: step.allowed(model.pod(cell.source), model.pod(cell.destination), cell.probe)
            for cell in cells
        }


# --- specs -----------------------------------------------------------------------------------


def _labels(**labels: str) -> dict[str, Any]:
    return {"matchLabels": dict(labels)}


def _spec(spec: dict[str, Any]) -> Spec:
    return lambda _model: spec


DENY_INGRESS = _spec({"podSelector": {}, "policyTypes": ["Ingress"]})
DENY_EGRESS = _spec({"podSelector": {}, "policyTypes": ["Egress"]})
DENY_BOTH = _spec({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def _host_cidr(address: str) -> str:
    return f"{address}/{128 if ':' in address else 32}"


def _everything_except(pod: str) -> Spec:
    def spec(model: Model) -> dict[str, Any]:
        excepted = model.pod(pod).ips
        blocks = []
        for family in model.families:
            whole = "::/0" if family == 6 else "0.0.0.0/0"
            mine = [_host_cidr(a) for a in excepted if (":" in a) == (family == 6)]
            blocks.append({"ipBlock": {"cidr": whole, "except": mine}})
        return {
            "podSelector": {"matchLabels": {POD_LABEL: "a"}},
            "ingress": [{"from": blocks}],
            "policyTypes": ["Ingress"],
        }

    return spec


def _egress_to_namespace_addresses(short: str) -> Spec:
    def spec(model: Model) -> dict[str, Any]:
        blocks = [
            {"ipBlock": {"cidr": _host_cidr(address)}}
            for pod in model.in_namespace(short)
            for address in pod.ips
        ]
        return {"podSelector": {}, "egress": [{"to": blocks}], "policyTypes": ["Egress"]}

    return spec


# --- expectations ----------------------------------------------------------------------------


def _into(namespace: str, letter: str | None, src_ok: Callable[[ModelPod], bool]) -> Allowed:
    """Cells into pods of ``namespace`` (of ``letter``, or all) allowed when ``src_ok``; every
    other cell allowed."""

    def allowed(src: ModelPod, dst: ModelPod, probe: Probe) -> bool:
        if dst.namespace == namespace and (letter is None or dst.letter == letter):
            return src_ok(src)
        return True

    return allowed


def _all(src: ModelPod, dst: ModelPod, probe: Probe) -> bool:
    return True


def _none(_src: ModelPod) -> bool:
    return False


# --- the scenarios ---------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "default-deny-ingress",
        "a policy selecting every pod of a namespace with no ingress rule MUST deny all ingress "
        "to them, from every pod on every node",
        (
            Step(
                "applied",
                (ApplyPolicy("x", "deny-ingress", DENY_INGRESS),),
                _into("x", None, _none),
            ),
        ),
    ),
    Scenario(
        "default-deny-egress",
        "a policy selecting every pod of a namespace with no egress rule MUST deny all egress "
        "from them, to every pod on every node",
        (
            Step(
                "applied",
                (ApplyPolicy("x", "deny-egress", DENY_EGRESS),),
                lambda src, dst, probe: src.namespace != "x",
            ),
        ),
    ),
    Scenario(
        "allow-all-union",
        "policies selecting a pod MUST be a union: an allow-all ingress policy beside a "
        "default deny allows everything",
        (
            Step(
                "applied",
                (
                    ApplyPolicy("x", "deny-ingress", DENY_INGRESS),
                    ApplyPolicy(
                        "x",
                        "allow-all",
                        _spec({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}),
                    ),
                ),
                _all,
            ),
        ),
    ),
    Scenario(
        "pod-selector",
        "ingress from a podSelector peer MUST allow exactly the selected pods of the policy's "
        "namespace",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "a-from-b",
                        _spec(
                            {
                                "podSelector": _labels(pod="a"),
                                "ingress": [{"from": [{"podSelector": _labels(pod="b")}]}],
                            }
                        ),
                    ),
                ),
                _into("x", "a", lambda src: src.namespace == "x" and src.letter == "b"),
            ),
        ),
    ),
    Scenario(
        "namespace-selector",
        "ingress from a namespaceSelector peer MUST allow every pod of the selected namespaces",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "a-from-ns-y",
                        _spec(
                            {
                                "podSelector": _labels(pod="a"),
                                "ingress": [{"from": [{"namespaceSelector": _labels(ns="y")}]}],
                            }
                        ),
                    ),
                ),
                _into("x", "a", lambda src: src.namespace == "y"),
            ),
        ),
    ),
    Scenario(
        "peer-selectors-and",
        "a peer with a namespaceSelector and a podSelector MUST allow only the pods matching "
        "both (AND)",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "a-from-y-b",
                        _spec(
                            {
                                "podSelector": _labels(pod="a"),
                                "ingress": [
                                    {
                                        "from": [
                                            {
                                                "namespaceSelector": _labels(ns="y"),
                                                "podSelector": _labels(pod="b"),
                                            }
                                        ]
                                    }
                                ],
                            }
                        ),
                    ),
                ),
                _into("x", "a", lambda src: src.namespace == "y" and src.letter == "b"),
            ),
        ),
    ),
    Scenario(
        "peers-or",
        "two peers of one rule MUST allow the pods matching either (OR)",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "a-from-y-or-b",
                        _spec(
                            {
                                "podSelector": _labels(pod="a"),
                                "ingress": [
                                    {
                                        "from": [
                                            {"namespaceSelector": _labels(ns="y")},
                                            {"podSelector": _labels(pod="b")},
                                        ]
                                    }
                                ],
                            }
                        ),
                    ),
                ),
                _into(
                    "x",
                    "a",
                    lambda src: (
                        src.namespace == "y" or (src.namespace == "x" and src.letter == "b")
                    ),
                ),
            ),
        ),
    ),
    Scenario(
        "match-expressions",
        "selectors with matchExpressions (In, NotIn) MUST select as their operators say",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "expressions",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [
                                    {
                                        "from": [
                                            {
                                                "namespaceSelector": {
                                                    "matchExpressions": [
                                                        {
                                                            "key": NS_LABEL,
                                                            "operator": "NotIn",
                                                            "values": ["y"],
                                                        }
                                                    ]
                                                },
                                                "podSelector": {
                                                    "matchExpressions": [
                                                        {
                                                            "key": POD_LABEL,
                                                            "operator": "In",
                                                            "values": ["a", "c"],
                                                        }
                                                    ]
                                                },
                                            }
                                        ]
                                    }
                                ],
                            }
                        ),
                    ),
                ),
                _into("x", None, lambda src: src.namespace != "y" and src.letter in ("a", "c")),
            ),
        ),
    ),
    Scenario(
        "named-ports",
        "a rule naming a port MUST allow the destination pod's container port of that name "
        "(and protocol) only",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "named-8081",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [
                                    {
                                        "ports": [
                                            {"port": port_name(8081, "tcp"), "protocol": "TCP"},
                                            {"port": port_name(8081, "udp"), "protocol": "UDP"},
                                        ]
                                    }
                                ],
                            }
                        ),
                    ),
                ),
                lambda src, dst, probe: dst.namespace != "x" or probe.port == 8081,
            ),
        ),
        ports=(8080, 8081),
    ),
    Scenario(
        "port-range",
        "a port with endPort MUST allow the whole range of its protocol, and a numbered port "
        "that port of its protocol only",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "ranges",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [
                                    {
                                        "ports": [
                                            {"protocol": "TCP", "port": 8080, "endPort": 8081},
                                            {"protocol": "UDP", "port": 8081},
                                        ]
                                    }
                                ],
                            }
                        ),
                    ),
                ),
                lambda src, dst, probe: (
                    dst.namespace != "x" or probe.proto == "tcp" or probe.port == 8081
                ),
            ),
        ),
        ports=(8080, 8081),
    ),
    Scenario(
        "ip-block-except",
        "an ipBlock peer MUST allow its cidr except the except ranges",
        (
            Step(
                "applied",
                (ApplyPolicy("x", "a-from-all-but-y-b", _everything_except("y/b")),),
                _into("x", "a", lambda src: src.key != "y/b"),
            ),
        ),
    ),
    Scenario(
        "egress-to-cidr",
        "an egress rule to ipBlocks MUST allow traffic to those addresses only",
        (
            Step(
                "applied",
                (ApplyPolicy("x", "egress-to-z", _egress_to_namespace_addresses("z")),),
                lambda src, dst, probe: src.namespace != "x" or dst.namespace == "z",
            ),
        ),
    ),
    Scenario(
        "policy-types-default",
        "a policy without policyTypes MUST isolate for Ingress always, and for Egress when it "
        "has egress rules",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "a-egress-only-rules",
                        _spec(
                            {
                                "podSelector": _labels(pod="a"),
                                "egress": [{"to": [{"podSelector": {}}]}],
                            }
                        ),
                    ),
                ),
                lambda src, dst, probe: (
                    not (dst.namespace == "x" and dst.letter == "a")
                    and (not (src.namespace == "x" and src.letter == "a") or dst.namespace == "x")
                ),
            ),
        ),
    ),
    Scenario(
        "replies-allowed",
        "replies to an allowed connection MUST be allowed, also into (out of) pods isolated "
        "for ingress (egress)",
        (
            Step(
                "applied",
                (
                    ApplyPolicy("x", "deny-both", DENY_BOTH),
                    ApplyPolicy(
                        "x",
                        "egress-to-y",
                        _spec(
                            {
                                "podSelector": {},
                                "egress": [{"to": [{"namespaceSelector": _labels(ns="y")}]}],
                                "policyTypes": ["Egress"],
                            }
                        ),
                    ),
                ),
                lambda src, dst, probe: (
                    dst.namespace != "x" and (src.namespace != "x" or dst.namespace == "y")
                ),
            ),
        ),
    ),
    Scenario(
        "policy-updated",
        "a replaced policy MUST be enforced as replaced, within the bound",
        (
            Step("applied", (ApplyPolicy("x", "ingress", DENY_INGRESS),), _into("x", None, _none)),
            Step(
                "replaced",
                (
                    ApplyPolicy(
                        "x",
                        "ingress",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [{"from": [{"namespaceSelector": _labels(ns="y")}]}],
                            }
                        ),
                    ),
                ),
                _into("x", None, lambda src: src.namespace == "y"),
            ),
        ),
    ),
    Scenario(
        "policy-deleted",
        "a deleted policy MUST stop being enforced, within the bound",
        (
            Step("applied", (ApplyPolicy("x", "deny", DENY_INGRESS),), _into("x", None, _none)),
            Step("deleted", (DeletePolicy("x", "deny"),), _all),
        ),
    ),
    Scenario(
        "pod-labels-changed",
        "a pod's changed labels MUST be followed by the policies selecting peers by them, "
        "within the bound",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "from-clients",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [{"from": [{"podSelector": _labels(role="client")}]}],
                            }
                        ),
                    ),
                ),
                _into("x", None, _none),
            ),
            Step(
                "labelled",
                (LabelPod("x/c", {"role": "client"}),),
                _into("x", None, lambda src: src.key == "x/c"),
            ),
            Step("unlabelled", (LabelPod("x/c", {"role": None}),), _into("x", None, _none)),
        ),
    ),
    Scenario(
        "namespace-labels-changed",
        "a namespace's changed labels MUST be followed by the policies selecting peers by "
        "them, within the bound",
        (
            Step(
                "applied",
                (
                    ApplyPolicy(
                        "x",
                        "from-trusted",
                        _spec(
                            {
                                "podSelector": {},
                                "ingress": [
                                    {"from": [{"namespaceSelector": _labels(env="trusted")}]}
                                ],
                            }
                        ),
                    ),
                ),
                _into("x", None, _none),
            ),
            Step(
                "labelled",
                (LabelNamespace("z", {"env": "trusted"}),),
                _into("x", None, lambda src: src.namespace == "z"),
            ),
        ),
    ),
)


def scenario_ids() -> list[str]:
    return [s.id for s in SCENARIOS]


def by_id(scenario_id: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.id == scenario_id:
            return scenario
    raise KeyError(scenario_id)


def policy_texts(scenario: Scenario, model: Model) -> list[str]:
    """Every action of the scenario, step by step, for the failure text."""
    return [
        f"[{step.name}] {action.text(model)}" for step in scenario.steps for action in step.actions
    ]


def action_list(steps: Sequence[Step]) -> list[Action]:
    return [action for step in steps for action in step.actions]
