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

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netlab.dataplane.nsexec import communicate_within, nsenter_argv
from netlab.netpol.compiler import NodeRuleSet, compile_node, transaction
from netlab.netpol.model import PolicyInputs, Workload, parse_policy, workload_of
from netlab.spec import LabSpec

JSONDict = dict[str, Any]
log = logging.getLogger(__name__)

LABELS_NOT_FOLLOWED_FAULT = "netpol-labels-not-followed"
DELETED_POLICY_FAULT = "netpol-deleted-policy-enforced"
ENGINE_FAULTS = frozenset({LABELS_NOT_FOLLOWED_FAULT, DELETED_POLICY_FAULT})
NFT_TIMEOUT = 30.0  # seconds for one nft -f
WRITERS_AT_ONCE = 8

# (NetworkPolicies, Pods, Namespaces) as the store has them.
State = tuple[Sequence[JSONDict], Sequence[JSONDict], Sequence[JSONDict]]


class PolicyEngineError(RuntimeError):
    """nft failed in a node namespace; the message carries its error."""


async def nft_apply(netns: str, document: str) -> None:
    """``nft -f -`` in ``netns``: one atomic transaction."""
    argv = nsenter_argv(netns, ["nft", "-f", "-"])
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, errors = await communicate_within(process, NFT_TIMEOUT, document.encode())
    except TimeoutError:
        raise PolicyEngineError(f"nft in {netns} timed out after {NFT_TIMEOUT} s") from None
    if process.returncode != 0:
        detail = errors.decode(errors="replace").strip().splitlines()
        raise PolicyEngineError(
            f"nft in {netns} exited {process.returncode}: {' | '.join(detail[:4]) or 'no output'}"
        )


@dataclass
class SyncFigures:
    """What the engine's syncs cost: count, last and worst duration (seconds), node writes."""

    syncs: int = 0
    last_seconds: float = 0.0
    max_seconds: float = 0.0
    writes: int = 0


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


class PolicyEngine:
    """NetworkPolicy enforcement on every node of a lab: ``start`` writes each node's table,
    then every ``notify`` leads to a sync (coalesced while one runs) from ``read_state()``;
    ``extra_workloads()`` adds lab endpoints that stand for pods (the cluster DNS)."""

    def __init__(
        self,
        spec: LabSpec,
        read_state: Callable[[], State],
        extra_workloads: Callable[[], Sequence[Workload]] = lambda: (),
    ) -> None:
        self.spec = spec
        self.read_state = read_state
        self.extra_workloads = extra_workloads
        self.plans = spec.node_plans()
        self.figures = SyncFigures()
        self.inputs = InputBuilder(spec.faults)
        self._written: dict[str, NodeRuleSet] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Condition()
        self._generation = 0
        self._applied = 0

    async def start(self) -> None:
        """The first sync (each node's table replaced whole), then follow ``notify``."""
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def notify(self) -> None:
        """Policies, pods or namespaces changed: sync soon."""
        self._generation += 1
        self._wake.set()

    async def synced(self, timeout: float) -> None:
        """Wait until every node's rules reflect every change notified so far."""
        wanted = self._generation
        async with asyncio.timeout(timeout), self._synced:
            await self._synced.wait_for(lambda: self._applied >= wanted)

    def rule_sets(self) -> dict[str, NodeRuleSet]:
        """What each node has now (node name -> its rules)."""
        return dict(self._written)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except PolicyEngineError as error:  # logged; the next change tries again
                log.error("network policy sync failed: %s", error)

    async def sync(self) -> None:
        """Compile every node from the current state and write the nodes that changed."""
        generation = self._generation
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
        gate = asyncio.Semaphore(WRITERS_AT_ONCE)

        async def write(node: str, document: str) -> None:
            async with gate:
                await nft_apply(netns[node], document)

        outcomes = await asyncio.gather(
            *(write(node, document) for node, (_, document) in wanted.items()),
            return_exceptions=True,
        )
        failures: list[BaseException] = []
        for (node, (rules, _)), outcome in zip(wanted.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # Unknown state: the next sync replaces the node's table whole.
                self._written.pop(node, None)
                failures.append(outcome)
            else:
                self._written[node] = rules
        elapsed = time.monotonic() - started
        self.figures.syncs += 1
        self.figures.writes += len(wanted) - len(failures)
        self.figures.last_seconds = elapsed
        self.figures.max_seconds = max(self.figures.max_seconds, elapsed)
        if failures:
            raise PolicyEngineError(str(failures[0]))
        async with self._synced:
            self._applied = max(self._applied, generation)
            self._synced.notify_all()
        if wanted:
            log.info(
                "network policy: %d node(s) written in %.3f s (%s)",
                len(wanted),
                elapsed,
                ", ".join(sorted(wanted)),
            )
