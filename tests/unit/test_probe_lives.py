"""Probes that change under a run: `conformance.kit.probes.lives.changed_pods` names a probe pod that
was deleted, evicted, replaced or restarted between two looks; the reachability sweep turns
every exchange with such a pod into "could not test" instead of a verdict, and the prefetch
names the change as the cause of its items' errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fake_probes import NO_PROBES, FakeProbeClient, ring_targets
from prefetch_checks import PODS as PREFETCH_PODS
from prefetch_checks import info_items, volume_items

from conformance.kit.exchanges.prefetch import plan_for_items as plan_prefetch
from conformance.kit.exchanges.prefetch import run_prefetch
from conformance.kit.exchanges.reachability import Endpoint, run_sweep
from conformance.kit.exchanges.sandboxes import name_vanished
from conformance.kit.probes.lives import PodLife, blame_removal, changed_pods

PODS_GONE = "probe-node-2"

BEFORE = {
    "probe-n1": PodLife("u1", {"a": 0, "b": 0}),
    "probe-n2": PodLife("u2", {"a": 0, "b": 0}),
    "probe-n3": PodLife("u3", {"a": 1, "b": 0}),
}


def test_unchanged_pods_are_not_named() -> None:
    assert changed_pods(BEFORE, dict(BEFORE)) == {}
    grown = {**BEFORE, "probe-n4": PodLife("u4", {"a": 0})}  # a newcomer changes nothing
    assert changed_pods(BEFORE, grown) == {}


def test_each_kind_of_change_is_named() -> None:
    after = {
        "probe-n1": PodLife("u1", {"a": 0, "b": 0}, removal="pod is being deleted (Evicted)"),
        "probe-n2": PodLife("u2-new", {"a": 0, "b": 0}),
        "probe-n3": PodLife("u3", {"a": 1, "b": 1}),
    }
    changed = changed_pods({**BEFORE, "peer-n1": PodLife("p1", {"agent": 0})}, after)
    assert changed == {
        "probe-n1": "probe pod probe-n1: pod is being deleted (Evicted)",
        "probe-n2": "probe pod probe-n2 was replaced meanwhile (uid u2 -> u2-new)",
        "probe-n3": "probe pod probe-n3: container b (0 -> 1 restarts) restarted meanwhile, "
        "losing what its agent had recorded",
        "peer-n1": "probe pod peer-n1 was deleted or evicted meanwhile",
    }


def test_exchanges_with_a_pod_that_changed_under_the_sweep_could_not_test() -> None:
    ring = {f"probe-node-{i}": PodLife(f"u{i}", {"a": 0}) for i in (1, 2, 3)}
    looks: list[Mapping[str, PodLife]] = [
        ring,
        {**ring, "probe-node-2": PodLife("u2", {"a": 1})},
    ]
    # Its exec fails too (as into a restarting container): the restart is named, not the exec.
    broken = FakeProbeClient(broken=frozenset({("probe-node-2", "a")}))
    outcomes = run_sweep(broken, ring_targets(("tcp",)), pods=lambda: looks.pop(0))
    assert looks == []  # looked once before, once after
    by_pair = {(o.target.source.pod, o.target.destination.pod): o for o in outcomes}
    assert len(by_pair) == 3
    errors = 0
    for (src, dst), outcome in by_pair.items():
        if "probe-node-2" in (src, dst):
            errors += 1
            assert outcome.error is not None
            assert outcome.error.startswith("probe pod probe-node-2: container a (0 -> 1 restarts)")
            assert outcome.error.endswith("(during the reachability sweep)")
        else:
            assert outcome.error is None
            assert outcome.reached
    assert errors == 2  # node-1 -> node-2 and node-2 -> node-3


def test_a_sweep_that_cannot_look_at_the_pods_judges_as_before() -> None:
    outcomes = run_sweep(FakeProbeClient(), ring_targets(("tcp",)), pods=lambda: None)
    assert all(o.error is None and o.reached for o in outcomes)


def test_prefetched_items_on_a_pod_that_changed_name_it_as_the_cause() -> None:
    pods = {p: PodLife(f"uid-{p}", {"a": 0, "b": 0}) for p in PREFETCH_PODS}
    looks: list[Mapping[str, PodLife]] = [pods, {p: v for p, v in pods.items() if p != PODS_GONE}]
    client = FakeProbeClient(broken=frozenset({(PODS_GONE, "a")}))  # its exec fails, too
    plans = plan_prefetch(volume_items(), NO_PROBES, "r")
    answers = {a.nodeid: a for a in run_prefetch(client, plans, pods=lambda: looks.pop(0))}  # type: ignore[arg-type]
    failed = {n: a.error for n, a in answers.items() if a.error is not None}
    assert set(failed) == {
        f"test_v.py::check_volume[a->b-{PODS_GONE}]",
        f"test_v.py::check_volume[b->a-{PODS_GONE}]",
    }
    for error in failed.values():
        assert error == (
            f"probe pod {PODS_GONE} was deleted or evicted meanwhile (during the prefetch)"
        )


def test_a_sandbox_error_names_the_pod_that_went_away_first() -> None:
    not_running = "exec failed: container b of pod ns/sandbox-n1 is not running"
    errors = {"sandbox-n1": not_running, "sandbox-n2": not_running, "sandbox-n3": "timed out"}
    lives = {
        "sandbox-n1": PodLife("u1", {"a": 0, "b": 0}, removal="pod is being deleted (Evicted)"),
        "sandbox-n3": PodLife("u3", {"a": 0, "b": 1}),
    }
    assert name_vanished(errors, lives) == {
        "sandbox-n1": f"probe pod sandbox-n1: pod is being deleted (Evicted) ({not_running})",
        "sandbox-n2": f"probe pod sandbox-n2 was deleted or evicted ({not_running})",
        "sandbox-n3": "timed out",
    }
    assert name_vanished(errors, None) == errors  # pods could not be listed: nothing to add


def test_a_pod_already_going_at_the_first_look_makes_its_exchanges_could_not_test() -> None:
    ring = {f"probe-node-{i}": PodLife(f"u{i}", {"a": 0}) for i in (1, 2, 3)}
    going = {**ring, PODS_GONE: PodLife("u2", {"a": 0}, removal="pod is being deleted")}
    outcomes = run_sweep(FakeProbeClient(), ring_targets(("tcp",)), pods=lambda: going)
    lost = {o.target.key for o in outcomes if o.error is not None}
    involved = {o.target.key for o in outcomes if PODS_GONE in o.target.pods}
    assert lost == involved
    assert involved
    assert all(
        o.error == f"probe pod {PODS_GONE}: pod is being deleted (during the reachability sweep)"
        for o in outcomes
        if o.target.key in lost
    )


def test_the_pods_a_verdict_rests_on() -> None:
    (exchange, *_) = ring_targets(("tcp",))
    assert exchange.pods == (exchange.source.pod, exchange.destination.pod)
    service = replace(exchange, destination=Endpoint("svc", "", ""), servers=("peer-1", "peer-2"))
    assert service.pods == (exchange.source.pod, "peer-1", "peer-2")
    unready = replace(service, unwanted_servers=("peer-3",))
    assert unready.pods == (exchange.source.pod, "peer-1", "peer-2", "peer-3")
    no_endpoints = replace(exchange, destination=Endpoint("svc", "", ""))  # nothing behind it
    assert no_endpoints.pods == (exchange.source.pod,)


def test_a_prefetched_answer_resting_on_a_pod_that_went_names_it_as_the_cause() -> None:
    pods = {p: PodLife(f"uid-{p}", {"a": 0, "b": 0}) for p in PREFETCH_PODS}
    backend = "peer-node-9"  # asked nothing, but the answer depends on it (a headless Service)
    looks: list[Mapping[str, PodLife]] = [
        {**pods, backend: PodLife("uid-peer", {"agent": 0})},
        pods,
    ]
    plans = plan_prefetch(info_items(), NO_PROBES, "r")
    resting = replace(
        plans[0], steps=tuple(replace(s, rests_on=(backend,)) for s in plans[0].steps)
    )
    answers = run_prefetch(FakeProbeClient(), [resting, *plans[1:]], pods=lambda: looks.pop(0))  # type: ignore[arg-type]
    assert [a.error for a in answers] == [
        f"probe pod {backend} was deleted or evicted meanwhile (during the prefetch)",
        *[None] * (len(plans) - 1),
    ]


def test_an_error_is_blamed_on_the_removal_of_its_pod_only_when_it_was_removed() -> None:
    lives = {
        "peer-n1": PodLife("u1", {"agent": 0}, removal="pod is being deleted (Evicted)"),
        "peer-n2": PodLife("u2", {"agent": 0}),
    }
    error = "exec failed: container agent is not running"
    assert blame_removal("peer-n1", error, lives) == (
        f"probe pod peer-n1: pod is being deleted (Evicted) ({error})"
    )
    assert blame_removal("peer-n3", error, lives) == (
        f"probe pod peer-n3 was deleted or evicted ({error})"
    )
    assert blame_removal("peer-n2", error, lives) is None  # it lives: the error stands
    assert blame_removal("peer-n1", error, None) is None  # the pods could not be listed
