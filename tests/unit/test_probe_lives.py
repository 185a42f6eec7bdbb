"""Probes that change under a run: `conformance.kit.deploy.changed_pods` names a probe pod that
was deleted, evicted, replaced or restarted between two looks, and the reachability sweep turns
every exchange with such a pod into "could not test" instead of a verdict."""

from __future__ import annotations

from collections.abc import Mapping

from test_reachability import FakeProbeClient, ring_targets

from conformance.kit.deploy import PodLife, changed_pods
from conformance.kit.reachability import run_sweep

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
    outcomes = run_sweep(FakeProbeClient(), ring_targets(("tcp",)), pods=lambda: looks.pop(0))
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
