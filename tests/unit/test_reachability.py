"""The two-pass reachability sweep without a cluster: fake agents answer the batched calls.

Checked: pass one is one batch per source container with one try per target; pass two retries
only the failed targets, bounded by ``reach_attempts``; a pass on a retry is recorded as
flaky; sources are judged; failed pairs are grouped by node; a container that cannot be asked
is could-not-test for its targets only; the sweep runs once per run behind its lock file.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from recording_agents import RecordingAgents

from conformance.kit.agent_client import AgentError, AgentResponse
from conformance.kit.pairs import NodePair, plan_node_pairs
from conformance.kit.probes import RunInfo
from conformance.kit.reachability import (
    PLANNER_ATTRIBUTE,
    Endpoint,
    Outcome,
    Sweep,
    SweepError,
    Target,
    failure_summary,
    outcomes_for,
    plan_for_items,
    run_sweep,
    sweep_once,
    swept_by,
)
from conformance.kit.settings import Timeouts

NODES = ("node-1", "node-2", "node-3")
POD_IP = {"probe-node-1": "10.244.0.2", "probe-node-2": "10.244.1.2", "probe-node-3": "10.244.2.2"}
NODE_IP = {"node-1": "192.168.77.1", "node-2": "192.168.77.2", "node-3": "192.168.77.3"}
TIMEOUTS = Timeouts(probe=0.1, reach_attempts=3, capture_wait=0.1)


def ring_targets(protos: Sequence[str] = ("tcp", "udp", "icmp")) -> list[Target]:
    """The ring's pod-to-pod targets, as test_no_snat plans them."""
    targets = []
    for proto in protos:
        for pair in plan_node_pairs(NODES):
            src, dst = f"probe-{pair.src}", f"probe-{pair.dst}"
            targets.append(
                Target(
                    check="test_no_snat",
                    proto=proto,
                    family=4,
                    source=Endpoint(src, "a", pair.src),
                    destination=Endpoint(dst, "a", pair.dst),
                    host=POD_IP[dst],
                    port=None if proto == "icmp" else 8080,
                    allowed_sources=(POD_IP[src],),
                )
            )
    return targets


@dataclass
class FakeAgents(RecordingAgents):
    """Answers agent batches like a cluster would. ``failures[(src_pod, host)]`` is how many
    tries fail (ETIMEDOUT) before one is answered; ``snat_nodes``: traffic leaving these nodes
    shows the node's IP; ``broken``: (pod, container) whose exec fails."""

    timeouts: Timeouts = TIMEOUTS
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    snat_nodes: frozenset[str] = frozenset()
    _tries: dict[tuple[str, str], int] = field(default_factory=dict)
    _sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # nonce -> (source, proto)

    def call(
        self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]
    ) -> list[AgentResponse]:
        self.record(pod, container, requests)
        return [self._answer(pod, dict(r)) for r in requests]

    def _answer(self, pod: str, request: dict[str, Any]) -> AgentResponse:
        op = request["op"]
        if op == "capture_start":
            return {"ok": True, "op": op, "capture_id": f"cap-{request['nonce']}"}
        if op in ("connect", "icmp"):
            key = (pod, str(request["host"]))
            with self._lock:
                self._tries[key] = self._tries.get(key, 0) + 1
                failing = self._tries[key] <= self.failures.get(key, 0)
            if failing:
                return {"ok": False, "op": op, "errno": "ETIMEDOUT", "error": "timed out"}
            node = pod.removeprefix("probe-")
            source = NODE_IP[node] if node in self.snat_nodes else POD_IP[pod]
            with self._lock:
                self._sent[str(request["nonce"])] = (source, str(request.get("proto", op)))
            return {"ok": True, "op": op, "peer_seen": source}
        nonce = str(request.get("nonce") or str(request.get("capture_id", "")).removeprefix("cap-"))
        sent = self._sent.get(nonce)
        if op == "seen":
            records = [] if sent is None else [{"peer": sent[0], "proto": sent[1]}]
            return {"ok": True, "op": op, "records": records}
        if op == "capture_result":
            packets = [] if sent is None else [{"src": sent[0], "dst": POD_IP[pod]}]
            return {"ok": True, "op": op, "packets": packets}
        raise AssertionError(f"unexpected op {op}")


def probe_batches(agents: FakeAgents) -> list[tuple[str, int]]:
    """(source pod, number of tries) of every batch that probed."""
    return [(pod, len(ops)) for pod, _c, ops in agents.calls if set(ops) <= {"connect", "icmp"}]


def test_pass_one_is_one_batch_per_source_and_everything_passes() -> None:
    agents = FakeAgents()
    outcomes = run_sweep(agents, ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert all(o.reached and o.attempts == 1 and not o.problems() for o in outcomes)
    assert all(o.flaky is None for o in outcomes)
    assert sorted(probe_batches(agents)) == [
        ("probe-node-1", 1),
        ("probe-node-2", 1),
        ("probe-node-3", 1),
    ]
    # Every exec went through a client of its own thread, and each was closed.
    assert agents.clones == agents.closed == len(agents.calls)


def test_pass_two_retries_only_the_failed_pairs_bounded() -> None:
    targets = ring_targets(("tcp", "udp", "icmp"))
    # node-1 -> node-2 never answers; node-2 -> node-3 answers on the second try.
    agents = FakeAgents(
        failures={
            ("probe-node-1", POD_IP["probe-node-2"]): 99,
            ("probe-node-2", POD_IP["probe-node-3"]): 3,  # tcp, udp, icmp each fail once
        }
    )
    outcomes = {o.target.key: o for o in run_sweep(agents, targets)}  # type: ignore[arg-type]
    batches = probe_batches(agents)
    # Pass one: one batch per source holding all its 3 targets; pass two: failed ones only.
    assert batches[:3] == [(p, 3) for p in ("probe-node-1", "probe-node-2", "probe-node-3")] or (
        sorted(batches[:3]) == [("probe-node-1", 3), ("probe-node-2", 3), ("probe-node-3", 3)]
    )
    retried = batches[3:]
    assert {pod for pod, _n in retried} == {"probe-node-1", "probe-node-2"}
    assert sum(n for pod, n in retried if pod == "probe-node-1") == 2 * 3  # 3 tries in all
    assert sum(n for pod, n in retried if pod == "probe-node-2") == 3  # one retry each
    for outcome in outcomes.values():
        src = outcome.target.source.node
        if src == "node-1":
            assert not outcome.reached
            assert outcome.attempts == TIMEOUTS.reach_attempts
            assert outcome.problems() == ["no answer after 3 attempt(s): timed out"]
        elif src == "node-2":
            assert (outcome.reached, outcome.attempts, outcome.problems()) == (True, 2, [])
            assert outcome.flaky == "passed on attempt 2 of 3 (first: ETIMEDOUT timed out)"
        else:
            assert (outcome.reached, outcome.attempts, outcome.flaky) == (True, 1, None)


def test_exchanges_run_concurrently_across_sources() -> None:
    barrier = threading.Barrier(3, timeout=5)

    class Meeting(FakeAgents):
        def call(self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]) -> Any:
            if requests[0]["op"] in ("connect", "icmp"):
                barrier.wait()  # all three sources must be in flight at once, or this times out
            return super().call(pod, container, requests)

    outcomes = run_sweep(Meeting(), ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert all(o.reached for o in outcomes)


def test_snat_is_a_problem_and_grouped_by_node() -> None:
    agents = FakeAgents(snat_nodes=frozenset({"node-2"}))
    outcomes = run_sweep(agents, ring_targets())  # type: ignore[arg-type]
    failed = [o for o in outcomes if o.problems()]
    assert {o.target.source.node for o in failed} == {"node-2"}
    problems = failed[0].problems()
    assert any("listener saw source ['192.168.77.2']" in p for p in problems)
    assert any("capture in probe-node-3 saw source ['192.168.77.2']" in p for p in problems)
    assert failure_summary(failed, "test_no_snat") == (
        "node-2 and node-3 are in all 3 failed pairs of test_no_snat in this run "
        "(node-2 as source 3; node-3 as destination 3); other nodes: none"
    )


def test_one_bad_node_reads_as_one_bad_node() -> None:
    dead = POD_IP["probe-node-2"]
    agents = FakeAgents(
        failures={("probe-node-1", dead): 99, ("probe-node-2", POD_IP["probe-node-3"]): 99}
    )
    sweep = Sweep({o.target.key: o for o in run_sweep(agents, ring_targets())})  # type: ignore[arg-type]
    failed = sweep.failed("test_no_snat")
    assert len(failed) == 6
    assert failure_summary(failed, "test_no_snat") == (
        "node-2 is in all 6 failed pairs of test_no_snat in this run "
        "(as source 3, as destination 3); other nodes: node-1 in 3 (as source 3), "
        "node-3 in 3 (as destination 3)"
    )


def test_no_node_in_every_failure_and_same_node_pairs() -> None:
    everything = FakeAgents(
        failures={(f"probe-{n}", ip): 99 for n in NODES for ip in POD_IP.values()}
    )
    failed = run_sweep(everything, ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert failure_summary(failed, "test_no_snat") == (
        "3 failed pairs of test_no_snat in this run, no node in all of them: "
        "node-1 in 2 (as source 1, as destination 1), node-2 in 2 (as source 1, as destination 1), "
        "node-3 in 2 (as source 1, as destination 1)"
    )
    same = Target(
        check="c",
        proto="tcp",
        family=4,
        source=Endpoint("probe-node-1", "a", "node-1"),
        destination=Endpoint("peer-node-1", "agent", "node-1"),
        host="10.244.0.3",
        port=8080,
    )
    assert failure_summary([Outcome(target=same, nonce="n")], "c") == (
        "node-1 is in the 1 failed pair of c in this run (as same-node 1); other nodes: none"
    )
    assert failure_summary([], "c") == "no failed pairs of c in this run"


def test_a_container_that_cannot_be_asked_is_could_not_test_for_its_targets_only() -> None:
    agents = FakeAgents(broken=frozenset({("probe-node-3", "a")}))
    targets = ring_targets(("tcp",))
    outcomes = run_sweep(agents, targets)  # type: ignore[arg-type]
    by_src = {o.target.source.node: o for o in outcomes}
    # probe-node-3 is the source of node-3 -> node-1 and the destination of node-2 -> node-3.
    assert by_src["node-3"].error is not None
    assert by_src["node-2"].error is not None
    assert by_src["node-1"].error is None
    assert by_src["node-1"].reached
    assert all(not o.problems() for o in outcomes)  # no verdict without an answer
    sweep = Sweep({o.target.key: o for o in outcomes})
    with pytest.raises(AgentError, match="container not running"):
        outcomes_for(sweep, [by_src["node-3"].target], agents)  # type: ignore[arg-type]
    assert outcomes_for(sweep, [by_src["node-1"].target], agents) == [by_src["node-1"]]  # type: ignore[arg-type]


def test_a_target_the_sweep_missed_is_probed_on_its_own() -> None:
    agents = FakeAgents()
    (target,) = ring_targets(("udp",))[:1]
    (outcome,) = outcomes_for(Sweep({}), [target], agents)  # type: ignore[arg-type]
    assert outcome.reached
    assert outcome.target == target


def test_outcomes_round_trip_through_json() -> None:
    agents = FakeAgents(failures={("probe-node-1", POD_IP["probe-node-2"]): 1})
    for outcome in run_sweep(agents, ring_targets()):  # type: ignore[arg-type]
        again = Outcome.from_dict(outcome.as_dict())
        assert again == outcome
        assert again.flaky == outcome.flaky
        assert again.problems() == outcome.problems()


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r", namespace="ns", shared_dir=str(tmp_path / "shared"))


def test_sweep_once_computes_once_for_all_callers(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    computed: list[int] = []
    agents = FakeAgents()

    def compute() -> list[Outcome]:
        computed.append(1)
        return run_sweep(agents, ring_targets())  # type: ignore[arg-type]

    # Concurrent callers (as xdist workers are) all wait on the lock and share one result.
    with ThreadPoolExecutor(max_workers=4) as pool:
        sweeps = list(pool.map(lambda _i: sweep_once(run, compute), range(4)))
    assert computed == [1]
    assert all(s.outcomes == sweeps[0].outcomes for s in sweeps)
    assert len(sweeps[0].outcomes) == 9


def test_a_failed_sweep_is_not_repeated(tmp_path: Path) -> None:
    run = run_info(tmp_path)

    def boom() -> list[Outcome]:
        raise RuntimeError("API server gone")

    with pytest.raises(RuntimeError):
        sweep_once(run, boom)
    with pytest.raises(SweepError, match="API server gone"):
        sweep_once(run, lambda: pytest.fail("must not compute again"))


@dataclass
class FakeItem:
    function: Any
    params: Mapping[str, Any]

    @property
    def callspec(self) -> Any:
        return type("CallSpec", (), {"params": self.params})()


def test_plan_for_items_reads_the_selected_items() -> None:
    def planner(params: Mapping[str, Any], probe_map: Any) -> list[Target]:
        return [
            t for t in ring_targets((params["proto"],)) if t.source.node == params["node_pair"].src
        ]

    @swept_by(planner)
    def check() -> None: ...

    def other() -> None: ...

    assert getattr(check, PLANNER_ATTRIBUTE) is planner
    items = [
        FakeItem(check, {"proto": "tcp", "node_pair": NodePair("node-1", "node-2")}),
        FakeItem(check, {"proto": "tcp", "node_pair": NodePair("node-1", "node-2")}),  # again
        FakeItem(check, {"proto": "udp", "node_pair": NodePair("node-3", "node-1")}),
        FakeItem(check, {"proto": None, "node_pair": None}),  # the cluster-unavailable case
        FakeItem(other, {"proto": "tcp"}),
    ]
    planned = plan_for_items(items, probe_map=None)  # type: ignore[arg-type]
    assert [(t.proto, t.source.node, t.destination.node) for t in planned] == [
        ("tcp", "node-1", "node-2"),
        ("udp", "node-3", "node-1"),
    ]
