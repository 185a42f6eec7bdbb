"""The lab's NetworkPolicy engine: every node's ``inet netlab-netpol`` table, kept equal to
what the API's NetworkPolicies, Pods and Namespaces say.

Why nftables (``nft -f``, one transaction per change per node) with nft sets: a policy's
peers are address sets and its pods' dispatch a verdict map, as kube-router and Calico's
iptables mode keep them in ipsets, but here a set's members and the rules that use them
change in the same atomic transaction, so no packet ever meets half an update (with iptables
and ipset that takes two tools and a swap). Debian 12's iptables is itself nftables
underneath, so the lab's kube-proxy rules, the CNI portmap rules and these share one kernel
subsystem, each in its own table; the policy table's chains run first (priorities -10 and
-5 on forward) and only ever drop or pass packets on. ``compiler.py`` says which chains and
where they hook.

Each change (a NetworkPolicy, a pod, a namespace written through the API) wakes the engine;
it recompiles every node from the store (cheap: pure Python over the objects), compares
with what each node has, and writes only the nodes whose rules changed, only the sets and
chains that changed, one ``nft -f`` per node, all nodes at once. ``figures`` keeps how long
syncs take; ``synced`` waits until a change is in every node.

Faults that live here (the others are the compiler's, ``compiler.COMPILER_FAULTS``):
``netpol-labels-not-followed`` (pods and namespaces are judged by the labels they had when
the engine first saw them) and ``netpol-deleted-policy-enforced`` (a deleted policy stays in
the rules).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from netlab.contract import JSONDict
from netlab.dataplane.rulesync import RuleSync, feed_rules
from netlab.netpol.compiler import NodeRuleSet, compile_node, transaction
from netlab.netpol.model import PolicyInputs, Workload, parse_policy, workload_of
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

LABELS_NOT_FOLLOWED_FAULT = "netpol-labels-not-followed"
DELETED_POLICY_FAULT = "netpol-deleted-policy-enforced"
ENGINE_FAULTS = frozenset({LABELS_NOT_FOLLOWED_FAULT, DELETED_POLICY_FAULT})
NFT_TIMEOUT = 30.0  # seconds for one nft -f

# (NetworkPolicies, Pods, Namespaces) as the store has them.
State = tuple[Sequence[JSONDict], Sequence[JSONDict], Sequence[JSONDict]]


class PolicyEngineError(RuntimeError):
    """nft failed in a node namespace; the message carries its error."""


async def nft_apply(netns: str, document: str) -> None:
    """``nft -f -`` in ``netns``: one atomic transaction."""
    await feed_rules(netns, ["nft", "-f", "-"], document, NFT_TIMEOUT, PolicyEngineError)


class InputBuilder:
    """Store objects -> ``PolicyInputs``, remembering what the engine faults need."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.faults = faults
        self._first_labels: dict[str, dict[str, str]] = {}  # uid -> labels first seen
        self._seen: dict[str, JSONDict] = {}  # uid -> each policy of the last build
        self._deleted: dict[str, JSONDict] = {}  # uid -> a policy the store no longer has

    def _labels(self, obj: JSONDict) -> dict[str, str]:
        meta = obj.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        if LABELS_NOT_FOLLOWED_FAULT not in self.faults:
            return labels
        return self._first_labels.setdefault(str(meta.get("uid") or meta.get("name")), labels)

    def _remember_deleted(self, policies: Sequence[JSONDict]) -> list[JSONDict]:
        """The fault's memory: every policy seen once and deleted since, renamed so that a
        new policy of the same name is a policy of its own."""
        current = {str(p["metadata"].get("uid")): p for p in policies}
        for uid, policy in self._seen.items():
            if uid not in current and uid not in self._deleted:
                kept = {**policy, "metadata": dict(policy["metadata"])}
                kept["metadata"]["name"] = f"{policy['metadata']['name']}.deleted-{uid[:8]}"
                self._deleted[uid] = kept
        self._seen = current
        return list(self._deleted.values())

    def build(self, state: State, extra: Sequence[Workload] = ()) -> PolicyInputs:
        policies, pods, namespaces = state
        if DELETED_POLICY_FAULT in self.faults:
            policies = [*policies, *self._remember_deleted(policies)]
        workloads: list[Workload] = list(extra)
        for pod in pods:
            workload = workload_of(pod)
            if workload is None:
                continue
            labels = self._labels(pod)
            workloads.append(
                Workload(
                    namespace=workload.namespace,
                    name=workload.name,
                    labels=tuple(sorted(labels.items())),
                    ips=workload.ips,
                    node=workload.node,
                    ports=workload.ports,
                    host_network=workload.host_network,
                )
            )
        return PolicyInputs(
            policies=tuple(parse_policy(p) for p in policies),
            workloads=tuple(workloads),
            namespaces={str(ns["metadata"]["name"]): self._labels(ns) for ns in namespaces},
        )


class PolicyEngine(RuleSync[str, NodeRuleSet]):
    """NetworkPolicy enforcement on every node of a lab: ``start`` writes each node's table,
    then every ``notify`` leads to a sync (coalesced while one runs) from ``read_state()``;
    ``extra_workloads()`` adds lab endpoints that stand for pods (the cluster DNS)."""

    error = PolicyEngineError
    what = "network policy"

    def __init__(
        self,
        spec: LabSpec,
        read_state: Callable[[], State],
        extra_workloads: Callable[[], Sequence[Workload]] = lambda: (),
    ) -> None:
        super().__init__()
        self.spec = spec
        self.read_state = read_state
        self.extra_workloads = extra_workloads
        self.plans = spec.node_plans()
        self.inputs = InputBuilder(spec.faults)
        self._written: dict[str, NodeRuleSet] = {}

    async def start(self) -> None:
        """The first sync (each node's table replaced whole), then follow ``notify``."""
        await self.sync()
        self.follow()

    def rule_sets(self) -> dict[str, NodeRuleSet]:
        """What each node has now (node name -> its rules)."""
        return dict(self._written)

    async def sync(self) -> None:
        """Compile every node from the current state and write the nodes that changed."""
        generation = self.generation()
        started = time.monotonic()
        inputs = self.inputs.build(self.read_state(), self.extra_workloads())
        wanted: dict[str, tuple[NodeRuleSet, str]] = {}
        for plan in self.plans:
            rules = compile_node(inputs, plan.name, self.spec.families, self.spec.faults)
            old = self._written.get(plan.name)
            if old is None or old.sets != rules.sets or old.chains != rules.chains:
                document = transaction(old, rules)
                if document:
                    wanted[plan.name] = (rules, document)
        netns = {plan.name: plan.netns for plan in self.plans}

        async def write(node: str, document: str) -> None:
            await nft_apply(netns[node], document)

        def written(node: str, rules: NodeRuleSet | None) -> None:
            if rules is None:  # unknown state: the next sync replaces the node's table whole
                self._written.pop(node, None)
            else:
                self._written[node] = rules

        await self.write_changed(generation, started, wanted, write, written)
        if wanted:
            log.info(
                "network policy: %d node(s) written in %.3f s (%s)",
                len(wanted),
                self.figures.last_seconds,
                ", ".join(sorted(wanted)),
            )
