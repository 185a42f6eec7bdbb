"""`conformance.kit.exchanges.reachability` without a cluster: fake probe clients answer the batched calls.

Checked: a check's planner travels on its ``swept_by`` marker and is read from the item with
``get_closest_marker`` (placeholder cases are not planned); pass one is one batch per source
container with one try per target; pass two retries only the failed targets, bounded by
``reach_attempts``; a node's own addresses are allowed for a node source; failed pairs are
grouped by node; a container that cannot be asked leaves its targets without a verdict;
the sweep runs once per run and stores each item's plan; each item gets its own outcomes;
and the sweep's exchanges against the real agent served by local processes.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_items import FakeItem, item
from fake_probes import (
    NO_PROBES,
    NODE_IP,
    NODES,
    POD_IP,
    RING,
    TIMEOUTS,
    FakeProbeClient,
    ring_target,
    ring_targets,
)
from kubernetes import client
from local_agents import LocalAgent, LocalProbeClient

from conformance.kit.base.errors import SweepError
from conformance.kit.base.runstate import RunInfo
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.reachability import (
    LOSS_PROBES,
    SWEEP_MARKER,
    Endpoint,
    Exchange,
    ItemPlan,
    Loss,
    Outcome,
    Sweep,
    Target,
    Unplanned,
    outcomes_for_item,
    plan_for_items,
    plan_item,
    planner_of,
    run_sweep,
    sweep_once,
    swept_by,
)
from conformance.kit.probes.model import ProbeMap
from conformance.kit.verdicts.judge import failure_summary, flaky_text, problems

pytest_plugins = ["pytester"]


def probe_batches(probes: FakeProbeClient) -> list[tuple[str, int]]:
    """(source pod, number of tries) of every batch that probed."""
    return [(pod, len(ops)) for pod, _c, ops in probes.calls if set(ops) <= {"connect", "icmp"}]


def sweep_of(outcomes: list[Outcome]) -> Sweep:
    return Sweep(outcomes={o.target.key: o for o in outcomes})


# --- the planner marker ------------------------------------------------------------------------


def ring_planner(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap
) -> Sequence[Target] | Unplanned:
    """One ring pair's target; node-9 has no probes (not applicable)."""
    assert check == "check_ring"  # the item's test function, named nowhere else
    pair: NodePair = params["node_pair"]
    if pair.src == "node-9":
        return Unplanned("node-9 carries no probe")
    return [ring_target(params["proto"], pair)]


@swept_by(ring_planner)
def check_ring(proto: str, node_pair: NodePair) -> None:
    """A stand-in for a swept check."""


def check_unswept(proto: str) -> None:
    """A check whose exchanges do not come from the sweep."""


def ring_items(protos: Sequence[str] = ("tcp", "udp", "icmp")) -> list[FakeItem]:
    return [
        item(
            f"t.py::check_ring[{proto}-{pair.src}->{pair.dst}]",
            check_ring,
            proto=proto,
            node_pair=pair,
        )
        for proto in protos
        for pair in RING
    ]


def test_the_planner_travels_on_the_marker() -> None:
    mark = check_ring.pytestmark[0]  # type: ignore[attr-defined]
    assert (mark.name, mark.args) == (SWEEP_MARKER, (ring_planner,))
    swept = ring_items(("tcp",))[0]
    assert planner_of(swept) is ring_planner
    assert swept.asked == [SWEEP_MARKER]  # read with get_closest_marker, as pytest's items answer
    assert planner_of(item("t.py::check_unswept[tcp]", check_unswept, proto="tcp")) is None
    assert planner_of(object()) is None  # not an item at all


def test_plan_item_reads_the_params_and_skips_placeholders() -> None:
    (first,) = ring_items(("tcp",))[:1]
    found = plan_item(first, NO_PROBES)
    assert found is not None
    plan, targets = found
    assert targets == [ring_target("tcp", RING[0])]
    assert plan == ItemPlan(first.nodeid, keys=(targets[0].key,))
    # The plugin's placeholder cases (cluster unavailable, not applicable) carry None.
    placeholder = item(
        "t.py::check_ring[cluster-unavailable]", check_ring, proto=None, node_pair=None
    )
    assert plan_item(placeholder, NO_PROBES) is None
    assert plan_item(item("t.py::check_ring", check_ring), NO_PROBES) is None  # not parametrized
    assert plan_item(item("t.py::u[tcp]", check_unswept, proto="tcp"), NO_PROBES) is None
    unplanned = item(
        "t.py::check_ring[x]", check_ring, proto="tcp", node_pair=NodePair("node-9", "node-1")
    )
    assert plan_item(unplanned, NO_PROBES) == (
        ItemPlan(unplanned.nodeid, unplanned=Unplanned("node-9 carries no probe")),
        [],
    )


def test_plan_for_items_plans_each_item_once_in_collection_order() -> None:
    items = [*ring_items(("tcp", "udp")), ring_items(("tcp",))[0]]  # the first collected twice
    plans, targets = plan_for_items(items, NO_PROBES)
    assert list(plans) == [i.nodeid for i in ring_items(("tcp", "udp"))]
    assert targets == ring_targets(("tcp", "udp"))


SWEPT_MODULE = """
import pytest
from conformance.kit.exchanges.reachability import Endpoint, Target, Unplanned, swept_by

def planner(check, params, probe_map):
    if params["proto"] == "sctp":
        return Unplanned("no sctp here")
    src = params["src"]
    return [
        Target(
            check=check,
            proto=params["proto"],
            family=4,
            source=Endpoint("probe-" + src, "a", src),
            destination=Endpoint("probe-node-2", "a", "node-2"),
            host="10.244.1.2",
            port=8080,
        )
    ]

@pytest.mark.parametrize("proto", ["tcp", "sctp"])
@pytest.mark.parametrize("src", ["node-1", "node-3"])
@swept_by(planner)
def test_pair(proto, src):
    pass

# The plugin's placeholders: a cluster that could not be read, a case that does not apply.
@pytest.mark.parametrize(("proto", "src"), [
    pytest.param(None, None, id="cluster-unavailable"),
    pytest.param(None, None, id="not-applicable", marks=pytest.mark.skip(reason="one node")),
])
@swept_by(planner)
def test_placeholder(proto, src):
    pass

@swept_by(planner)
class TestMarkedClass:
    @pytest.mark.parametrize("proto", ["udp"])
    @pytest.mark.parametrize("src", ["node-3"])
    def test_in_class(self, proto, src):
        pass

def test_unswept():
    pass
"""


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_real_items_are_planned_from_their_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_swept=SWEPT_MODULE)
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    plans, targets = plan_for_items(items, NO_PROBES)
    planned = {nodeid.split("::", 1)[1]: plan for nodeid, plan in plans.items()}
    assert sorted(planned) == [
        "TestMarkedClass::test_in_class[node-3-udp]",  # the class's marker is the closest
        "test_pair[node-1-sctp]",
        "test_pair[node-1-tcp]",
        "test_pair[node-3-sctp]",
        "test_pair[node-3-tcp]",
    ]
    assert planned["test_pair[node-1-sctp]"].unplanned == Unplanned("no sctp here")
    assert [(t.proto, t.source.node) for t in targets] == [
        ("tcp", "node-1"),
        ("tcp", "node-3"),
        ("udp", "node-3"),
    ]
    assert planned["test_pair[node-3-tcp]"].keys == (targets[1].key,)


# --- the sweep ---------------------------------------------------------------------------------


def test_pass_one_is_one_batch_per_source_and_everything_passes() -> None:
    probes = FakeProbeClient()
    outcomes = run_sweep(probes, ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert all(o.reached and o.attempts == 1 and not problems(o) for o in outcomes)
    assert all(flaky_text(o) is None for o in outcomes)
    assert sorted(probe_batches(probes)) == [
        ("probe-node-1", 1),
        ("probe-node-2", 1),
        ("probe-node-3", 1),
    ]
    # Every exec went through a client of its own thread, and each was closed.
    assert probes.clones == probes.closed == len(probes.calls)


def test_pass_two_retries_only_the_failed_pairs_bounded() -> None:
    targets = ring_targets(("tcp", "udp", "icmp"))
    # node-1 -> node-2 never answers; node-2 -> node-3 answers on the second try.
    probes = FakeProbeClient(
        failures={
            ("probe-node-1", POD_IP["probe-node-2"]): 99,
            ("probe-node-2", POD_IP["probe-node-3"]): 3,  # tcp, udp, icmp each fail once
        }
    )
    outcomes = {o.target.key: o for o in run_sweep(probes, targets)}  # type: ignore[arg-type]
    batches = probe_batches(probes)
    # Pass one: one batch per source holding all its 3 targets; pass two: failed ones only.
    assert sorted(batches[:3]) == [("probe-node-1", 3), ("probe-node-2", 3), ("probe-node-3", 3)]
    retried = batches[3:]
    assert {pod for pod, _n in retried} == {"probe-node-1", "probe-node-2"}
    assert sum(n for pod, n in retried if pod == "probe-node-1") == 2 * 3  # 3 tries in all
    assert sum(n for pod, n in retried if pod == "probe-node-2") == 3  # one retry each
    for outcome in outcomes.values():
        src = outcome.target.source.node
        if src == "node-1":
            assert not outcome.reached
            assert outcome.attempts == TIMEOUTS.reach_attempts
            assert problems(outcome) == ["no answer after 3 attempt(s): timed out"]
        elif src == "node-2":
            assert (outcome.reached, outcome.attempts, problems(outcome)) == (True, 2, [])
            assert flaky_text(outcome) == "passed on attempt 2 of 3 (first: ETIMEDOUT timed out)"
        else:
            assert (outcome.reached, outcome.attempts, flaky_text(outcome)) == (True, 1, None)


def test_exchanges_run_concurrently_across_sources() -> None:
    barrier = threading.Barrier(3, timeout=5)

    class Meeting(FakeProbeClient):
        def call(
            self, pod: str, container: str, requests: Sequence[Mapping[str, Any]], **how: Any
        ) -> Any:
            if requests[0]["op"] in ("connect", "icmp"):
                barrier.wait()  # all three sources must be in flight at once, or this times out
            return super().call(pod, container, requests, **how)

    outcomes = run_sweep(Meeting(), ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert all(o.reached for o in outcomes)


def test_a_node_source_may_use_any_address_on_its_interfaces() -> None:
    node = "node-1"
    host_target = Target(
        check="test_node_to_pod",
        proto="tcp",
        family=4,
        source=Endpoint(f"host-{node}", "agent", node),
        destination=Endpoint("probe-node-1", "a", node),
        host=POD_IP["probe-node-1"],
        port=8080,
        allowed_sources=(NODE_IP[node],),  # the Node object's addresses
        source_is_node=True,
    )
    probes = FakeProbeClient()
    (outcome,) = run_sweep(probes, [host_target])  # type: ignore[arg-type]
    assert ("host-node-1", "agent", ("addresses",)) in probes.calls
    assert outcome.allowed_sources == ("10.244.9.1", NODE_IP[node], "fe80::1")
    assert outcome.exchange is not None
    assert outcome.exchange.listener_peers == ("10.244.9.1",)
    assert problems(outcome) == []
    # The same source judged against the Node object's addresses alone would be broken.
    pod_like = dataclasses.replace(host_target, source_is_node=False)
    (strict,) = run_sweep(FakeProbeClient(), [pod_like])  # type: ignore[arg-type]
    assert strict.allowed_sources == (NODE_IP[node],)
    assert problems(strict) == [
        "listener saw source ['10.244.9.1']",
        "capture in probe-node-1 saw source ['10.244.9.1']",
    ]


def test_snat_is_a_problem_and_grouped_by_node() -> None:
    probes = FakeProbeClient(snat_nodes=frozenset({"node-2"}))
    outcomes = run_sweep(probes, ring_targets())  # type: ignore[arg-type]
    failed = [o for o in outcomes if problems(o)]
    assert {o.target.source.node for o in failed} == {"node-2"}
    found = problems(failed[0])
    assert "listener saw source ['192.168.77.2']" in found
    assert "capture in probe-node-3 saw source ['192.168.77.2']" in found
    assert failure_summary(failed, "test_no_snat") == (
        "node-2 and node-3 are in all 3 failed pairs of test_no_snat in this run "
        "(node-2 as source 3; node-3 as destination 3); other nodes: none"
    )


def test_one_bad_node_reads_as_one_bad_node() -> None:
    dead = POD_IP["probe-node-2"]
    probes = FakeProbeClient(
        failures={("probe-node-1", dead): 99, ("probe-node-2", POD_IP["probe-node-3"]): 99}
    )
    sweep = sweep_of(run_sweep(probes, ring_targets()))  # type: ignore[arg-type]
    failed = [o for o in sweep.of_check("test_no_snat") if problems(o)]
    assert len(failed) == 6
    assert failure_summary(failed, "test_no_snat") == (
        "node-2 is in all 6 failed pairs of test_no_snat in this run "
        "(as source 3, as destination 3); other nodes: node-1 in 3 (as source 3), "
        "node-3 in 3 (as destination 3)"
    )
    assert sweep.of_check("test_node_to_pod") == []


def test_no_node_in_every_failure_and_same_node_pairs() -> None:
    everything = FakeProbeClient(
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


def test_a_container_that_cannot_be_asked_leaves_only_its_targets_without_verdict() -> None:
    probes = FakeProbeClient(broken=frozenset({("probe-node-3", "a")}))
    outcomes = run_sweep(probes, ring_targets(("tcp",)))  # type: ignore[arg-type]
    by_src = {o.target.source.node: o for o in outcomes}
    # probe-node-3 is the source of node-3 -> node-1 and the destination of node-2 -> node-3.
    assert "container not running" in str(by_src["node-3"].error)
    assert "container not running" in str(by_src["node-2"].error)
    assert by_src["node-3"].exchange is None
    assert by_src["node-1"].error is None
    assert by_src["node-1"].reached
    assert all(not problems(o) for o in outcomes)  # no verdict without an answer


def test_a_refused_capture_is_no_verdict_for_its_target() -> None:
    probes = FakeProbeClient(refuse_captures=frozenset({"probe-node-2"}))
    outcomes = {o.target.destination.pod: o for o in run_sweep(probes, ring_targets(("udp",)))}  # type: ignore[arg-type]
    refused = outcomes["probe-node-2"]
    assert refused.error is not None
    assert "start packet capture: agent answered error 'no scapy'" in refused.error
    assert refused.attempts == 0  # never probed: its verdict could not be complete
    assert all(o.error is None and o.reached for d, o in outcomes.items() if d != "probe-node-2")


def captures_started(probes: FakeProbeClient, pod: str) -> int:
    return sum(1 for p, _c, ops in probes.calls if p == pod and "capture_start" in ops)


def test_a_capture_that_missed_an_answered_exchange_is_taken_again_once() -> None:
    probes = FakeProbeClient(blind_captures={"probe-node-2": 1})
    outcomes = run_sweep(probes, ring_targets(("tcp",)))  # type: ignore[arg-type]
    assert all(o.reached and not problems(o) for o in outcomes)
    second = [o for o in outcomes if o.target.destination.pod == "probe-node-2"]
    assert [o.exchange.captures for o in second if o.exchange] == [2]
    assert "(second look: the first missed the packet at the destination)" in second[0].describe()
    assert captures_started(probes, "probe-node-2") == 2
    assert captures_started(probes, "probe-node-3") == 1


def test_loss_is_measured_after_the_captures_one_batch_per_source() -> None:
    """Every pair exchange that answered gets one loss measurement of LOSS_PROBES probes, in
    one batch per source, once the captures were read (no sniffer parses a hundred probes)."""
    lossy = ("probe-node-2", POD_IP["probe-node-3"])
    probes = FakeProbeClient(lost={lossy: 9})
    outcomes = run_sweep(probes, ring_targets(("tcp", "udp")))  # type: ignore[arg-type]
    measured = [(pod, ops) for pod, _c, ops in probes.calls if any("*" in op for op in ops)]
    assert sorted((pod, len(ops)) for pod, ops in measured) == [
        ("probe-node-1", 2),
        ("probe-node-2", 2),
        ("probe-node-3", 2),
    ]
    last_capture_read = max(i for i, c in enumerate(probes.calls) if "capture_result" in c[2])
    first_measured = min(i for i, c in enumerate(probes.calls) if any("*" in op for op in c[2]))
    assert first_measured > last_capture_read
    for outcome in outcomes:
        assert outcome.exchange is not None
        loss = outcome.exchange.loss
        assert loss is not None
        assert loss.sent == LOSS_PROBES
        if (outcome.target.source.pod, outcome.target.host) == lossy:
            assert loss.lost == 9
            assert problems(outcome) == [
                "lost more than the 5 % --max-loss allows: 9 of 100 probes lost (9.0 %); "
                "failed: ETIMEDOUT 9"
            ]
        else:
            assert (loss.lost, problems(outcome)) == (0, [])
    # What the sweep measured is in the run's totals.
    assert sweep_of(outcomes).loss_totals() == {"measured": 6, "probes": 600, "probes_lost": 18}


def test_lost_probes_while_the_destination_dropped_some_are_measured_again_calmer() -> None:
    """A listener that fell behind (its socket buffer full) loses probes that the network
    carried: such a measurement is made again with fewer at once; the last one is judged."""
    starved = ("probe-node-1", POD_IP["probe-node-2"])
    probes = FakeProbeClient(lost={starved: 8}, listener_drops={"probe-node-2": [30, 0]})
    outcomes = run_sweep(probes, ring_targets(("udp",)))  # type: ignore[arg-type]
    (again,) = [o for o in outcomes if (o.target.source.pod, o.target.host) == starved]
    toward = [(pod, n) for pod, host, n in probes.measured if host == starved[1]]
    assert toward == [("probe-node-1", 32), ("probe-node-1", 4)]  # then the calm round
    assert again.exchange is not None
    assert again.exchange.loss == Loss(
        sent=100, lost=8, errors={"ETIMEDOUT": 8}, endpoint_drops=0, measurements=2
    )
    # Without drops at the destination nobody is measured twice.
    assert len(probes.measured) == 4


def test_what_the_measuring_socket_dropped_itself_counts_as_an_ends_drop() -> None:
    starved = ("probe-node-1", POD_IP["probe-node-2"])
    probes = FakeProbeClient(lost={starved: 8}, socket_drops={starved: 12})
    outcomes = run_sweep(probes, ring_targets(("icmp",)))  # type: ignore[arg-type]
    (doubt,) = [o for o in outcomes if (o.target.source.pod, o.target.host) == starved]
    assert doubt.exchange is not None
    assert doubt.exchange.loss is not None
    # ICMP: the destination's kernel answers (0), the measuring socket dropped 12 itself.
    assert (doubt.exchange.loss.endpoint_drops, doubt.exchange.loss.measurements) == (12, 3)


def test_a_listener_that_keeps_dropping_leaves_the_loss_unknown() -> None:
    starved = ("probe-node-1", POD_IP["probe-node-2"])
    probes = FakeProbeClient(lost={starved: 8}, listener_drops={"probe-node-2": [30, 30, 30]})
    outcomes = run_sweep(probes, ring_targets(("udp",)))  # type: ignore[arg-type]
    (doubt,) = [o for o in outcomes if (o.target.source.pod, o.target.host) == starved]
    assert doubt.exchange is not None
    assert doubt.exchange.loss is not None
    assert (doubt.exchange.loss.measurements, doubt.exchange.loss.endpoint_drops) == (3, 30)
    assert problems(doubt) == []  # no verdict on the network: the item could not test


def test_a_pair_that_never_answered_is_not_measured() -> None:
    silent = ("probe-node-1", POD_IP["probe-node-2"])
    probes = FakeProbeClient(failures={silent: 99})
    outcomes = run_sweep(probes, ring_targets(("udp",)))  # type: ignore[arg-type]
    (never,) = [o for o in outcomes if (o.target.source.pod, o.target.host) == silent]
    assert never.exchange is not None
    assert never.exchange.loss is None
    assert problems(never) == ["no answer after 3 attempt(s): timed out"]
    assert all(o.exchange and o.exchange.loss for o in outcomes if o is not never)


def test_without_loss_probes_nothing_is_measured() -> None:
    probes = FakeProbeClient()
    outcomes = run_sweep(probes, ring_targets(("tcp",)), loss_probes=0)  # type: ignore[arg-type]
    assert all(o.exchange and o.exchange.loss is None for o in outcomes)
    assert not [c for c in probes.calls if any("*" in op for op in c[2])]


def test_a_capture_that_misses_twice_is_a_verdict() -> None:
    probes = FakeProbeClient(blind_captures={"probe-node-2": 5})
    outcomes = run_sweep(probes, ring_targets(("tcp",)))  # type: ignore[arg-type]
    (missed,) = [o for o in outcomes if o.target.destination.pod == "probe-node-2"]
    assert any("capture in probe-node-2 saw source nothing" in p for p in problems(missed))
    assert captures_started(probes, "probe-node-2") == 2  # one second look, no more


def test_exchange_description_names_both_ends() -> None:
    target = ring_target("udp", RING[0])
    exchange = Exchange(
        attempts=3,
        client_response={"ok": False, "error": "timed out"},
        listener_peers=(),
        captured_sources=("10.0.0.1",),
    )
    text = Outcome(target=target, nonce="n", attempts=3, exchange=exchange).describe()
    assert text.startswith(
        "udp probe-node-1/a -> probe-node-2/a at 10.244.1.2:8080: NOT reached after 3 attempt(s)"
    )
    assert "timed out" in text
    assert "listener recorded nothing" in text
    assert "capture saw ['10.0.0.1']" in text
    unasked = Outcome(target=target, nonce="n", error="exec failed")
    assert unasked.describe().endswith("at 10.244.1.2:8080: error: exec failed")
    icmp = ring_target("icmp", RING[0])
    assert icmp.describe() == "icmp probe-node-1/a -> probe-node-2/a at 10.244.1.2"


def test_outcomes_round_trip_through_json() -> None:
    probes = FakeProbeClient(failures={("probe-node-1", POD_IP["probe-node-2"]): 1})
    for outcome in run_sweep(probes, ring_targets()):  # type: ignore[arg-type]
        again = Outcome.from_dict(outcome.to_dict())
        assert again == outcome
        assert flaky_text(again) == flaky_text(outcome)
        assert problems(again) == problems(outcome)


# --- once per run, and each item's own outcomes -----------------------------------------------


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r", namespace="ns", shared_dir=str(tmp_path / "shared"))


def test_sweep_once_sweeps_once_for_all_callers_and_keeps_each_plan(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    probes = FakeProbeClient()
    items = [
        *ring_items(),
        item(
            "t.py::check_ring[gone]",
            check_ring,
            proto="tcp",
            node_pair=NodePair("node-9", "node-1"),
        ),
    ]
    callers = 4
    everyone_asks = threading.Barrier(callers, timeout=10)
    sweeps: list[Sweep] = []

    def ask() -> None:
        everyone_asks.wait()
        sweeps.append(sweep_once(run, items, NO_PROBES, probes))  # type: ignore[arg-type]

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sweeps) == callers
    assert all(s == sweeps[0] for s in sweeps)
    assert len(probe_batches(probes)) == 3  # one pass of three sources, for everyone
    sweep = sweeps[0]
    assert len(sweep.outcomes) == 9
    assert sweep.items["t.py::check_ring[gone]"].unplanned == Unplanned("node-9 carries no probe")
    for swept in ring_items():
        (key,) = sweep.items[swept.nodeid].keys
        assert sweep.outcomes[key].target == ring_target(
            swept.callspec.params["proto"],  # type: ignore[union-attr]
            swept.callspec.params["node_pair"],  # type: ignore[union-attr]
        )


def test_a_failed_sweep_is_not_repeated(tmp_path: Path) -> None:
    run = run_info(tmp_path)

    class Gone(FakeProbeClient):
        def call(
            self, pod: str, container: str, requests: Sequence[Mapping[str, Any]], **how: Any
        ) -> Any:
            self.record(pod, container, requests)
            raise RuntimeError("API server gone")

    gone = Gone()
    with pytest.raises(RuntimeError, match="API server gone"):
        sweep_once(run, ring_items(), NO_PROBES, gone)  # type: ignore[arg-type]
    asked = len(gone.calls)
    with pytest.raises(SweepError, match="the reachability sweep failed: API server gone"):
        sweep_once(run, ring_items(), NO_PROBES, gone)  # type: ignore[arg-type]
    assert len(gone.calls) == asked  # not swept again


def test_each_item_gets_its_own_outcomes(tmp_path: Path) -> None:
    probes = FakeProbeClient()
    sweep = sweep_once(run_info(tmp_path), ring_items(), NO_PROBES, probes)  # type: ignore[arg-type]
    for swept in ring_items():
        outcomes, unplanned = outcomes_for_item(sweep, swept, NO_PROBES, probes)  # type: ignore[arg-type]
        assert unplanned is None
        assert [o.target for o in outcomes] == plan_item(swept, NO_PROBES)[1]  # type: ignore[index]
    gone = item(
        "t.py::check_ring[gone]", check_ring, proto="tcp", node_pair=NodePair("node-9", "node-1")
    )
    assert outcomes_for_item(sweep, gone, NO_PROBES, probes) == (  # type: ignore[arg-type]
        [],
        Unplanned("node-9 carries no probe"),
    )


def test_an_item_the_sweep_did_not_plan_is_swept_on_its_own() -> None:
    probes = FakeProbeClient()
    late = ring_items(("udp",))[0]
    outcomes, unplanned = outcomes_for_item(Sweep(), late, NO_PROBES, probes)  # type: ignore[arg-type]
    assert unplanned is None
    (outcome,) = outcomes
    assert outcome.reached
    assert outcome.target == ring_target("udp", RING[0])
    assert len(probe_batches(probes)) == 1
    unswept = item("t.py::u[tcp]", check_unswept, proto="tcp")
    with pytest.raises(ValueError, match=f"carries no {SWEEP_MARKER} marker"):
        outcomes_for_item(Sweep(), unswept, NO_PROBES, probes)  # type: ignore[arg-type]


# --- against the real agent (local processes, no cluster) ------------------------------------


def test_the_sweep_against_the_real_agent(local_agents: dict[str, LocalAgent]) -> None:
    local = LocalProbeClient(client.CoreV1Api(client.ApiClient()), "ns", Timeouts(probe=2.0))
    b = local_agents["b"]
    targets = [
        Target(
            check="test_local",
            proto=proto,
            family=4,
            source=Endpoint("pod", "a", "here"),
            destination=Endpoint("pod", "b", "here"),
            host="127.0.0.1",
            port=b.tcp_port if proto == "tcp" else b.udp_port,
            capture=False,  # no sniffer outside a pod
            allowed_sources=("127.0.0.1",),
        )
        for proto in ("tcp", "udp")
    ]
    for outcome in run_sweep(local, targets):
        assert outcome.error is None, outcome.error
        assert outcome.exchange is not None
        assert outcome.reached, outcome.describe()
        assert outcome.exchange.peer_seen == "127.0.0.1"
        assert outcome.exchange.listener_peers == ("127.0.0.1",)
        # A hundred probes each: the listener reported every one's source, none was lost.
        # Nothing lost: what the destination dropped needs no second reading; the measuring
        # UDP socket says what it dropped itself (nothing), TCP has no such count.
        dropped = 0 if outcome.target.proto == "udp" else None
        assert outcome.exchange.loss == Loss(sent=LOSS_PROBES, lost=0, endpoint_drops=dropped)
        assert outcome.exchange.peers_seen == ("127.0.0.1",)
        assert outcome.exchange.servers_seen == ("(unnamed)",)  # no POD_NAME here
        assert problems(outcome) == []
