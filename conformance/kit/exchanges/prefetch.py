"""Staged, batched, concurrent agent requests for the per-pod checks: one prefetch per run.

A check marked ``@pytest.mark.prefetched_by(planner)`` names the agent requests of each of its
test items (`Step`: pod, container, request, stage). Once per run the prefetch plans every selected
item's steps and runs them stage by stage (0, then 1, ...): within a stage, ONE agent ``call``
batch per (pod, container) holding all that container's requests of the stage, the batches of
all containers concurrently (`conformance.kit.probes.parallel.in_parallel`). A later stage sees the
effects of the earlier ones (a file written in stage 0 is read in stage 1).

Each item's nonce is derived from the run id and the item's node id (`item_nonce`), so every
process plans identical requests; the answers are computed once per run
(`conformance.kit.base.runstate.once`), and xdist workers read the same answers. A container that
cannot be asked makes only the items with a step there could not test. An item the prefetch
did not plan runs its own steps when it asks (`answers_for_item`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from conformance.kit.base.errors import PrefetchError, ProbeCallError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import RunInfo, once
from conformance.kit.probes.client import ProbeClient, ProbeResponse
from conformance.kit.probes.lives import PodLife, changed_pods, why_lost
from conformance.kit.probes.model import ProbeMap
from conformance.kit.probes.parallel import in_parallel

#: The marker a check carries when its agent requests come from the prefetch.
PREFETCH_MARKER = "prefetched_by"
#: Concurrent agent calls of a stage (one per container).
MAX_PARALLEL_CALLS = 16
#: The run-state record of the prefetch.
PREFETCH_RECORD = "prefetch"


@dataclass(frozen=True)
class Step(JSONData):
    """One named agent request of a test item, sent in ``stage`` (lower stages run first);
    ``rests_on``: other pods its answer depends on (a headless Service's endpoints), so that
    one taken away under the prefetch makes the item "could not test"."""

    name: str
    pod: str
    container: str
    request: Mapping[str, Any]
    stage: int = 0
    rests_on: tuple[str, ...] = ()


#: ``planner(params, probe_map, nonce)``: the steps of one test item.
Planner = Callable[[Mapping[str, Any], ProbeMap, str], list[Step]]


@dataclass(frozen=True)
class PrefetchPlan(JSONData):
    """A test item's nonce and steps (step names unique within the item)."""

    nodeid: str
    nonce: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class ItemAnswers(JSONData):
    """What the agents answered to one item's steps, by step name.

    ``error`` set: a container of the item could not be asked (could not test); ``responses``
    then holds what was answered before.
    """

    nodeid: str
    nonce: str
    steps: tuple[Step, ...]
    responses: Mapping[str, ProbeResponse] = field(default_factory=dict)
    error: str | None = None

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def __getitem__(self, name: str) -> ProbeResponse:
        return self.responses[name]


def prefetched_by(planner: Planner) -> pytest.MarkDecorator:
    """The ``prefetched_by`` marker carrying ``planner``, to decorate a check with (``with_args``:
    pytest takes a lone callable argument for the function to decorate)."""
    return pytest.mark.prefetched_by.with_args(planner)


def item_nonce(run_id: str, nodeid: str) -> str:
    """The item's nonce: the same in every process of a run, different between items."""
    digest = hashlib.sha256(f"{run_id}\0{nodeid}".encode()).hexdigest()
    return f"nc-{digest[:16]}"


def plan_item(item: Any, probe_map: ProbeMap, run_id: str) -> PrefetchPlan | None:
    """The plan of one test item (read duck-typed: ``nodeid``, ``get_closest_marker``, optional
    ``callspec.params``); None when it carries no ``prefetched_by`` marker or is a placeholder
    (a parameter is None: cluster unavailable, not applicable)."""
    get_marker = getattr(item, "get_closest_marker", None)
    marker = get_marker(PREFETCH_MARKER) if get_marker is not None else None
    if marker is None or not marker.args:
        return None
    planner: Planner = marker.args[0]
    callspec = getattr(item, "callspec", None)
    params: Mapping[str, Any] = callspec.params if callspec is not None else {}
    if any(value is None for value in params.values()):
        return None
    nodeid = str(item.nodeid)
    nonce = item_nonce(run_id, nodeid)
    steps = tuple(planner(params, probe_map, nonce))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"{nodeid}: step names repeat: {names}")
    return PrefetchPlan(nodeid=nodeid, nonce=nonce, steps=steps)


def plan_for_items(items: Iterable[Any], probe_map: ProbeMap, run_id: str) -> list[PrefetchPlan]:
    """The plans of every collected item carrying a ``prefetched_by`` marker, in collection
    order (an item collected twice is planned once)."""
    plans: dict[str, PrefetchPlan] = {}
    for item in items:
        plan = plan_item(item, probe_map, run_id)
        if plan is not None:
            plans.setdefault(plan.nodeid, plan)
    return list(plans.values())


def run_prefetch(
    probe_client: ProbeClient,
    plans: Sequence[PrefetchPlan],
    *,
    max_parallel: int = MAX_PARALLEL_CALLS,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
) -> list[ItemAnswers]:
    """Run every plan's steps: stage by stage, one batch per (pod, container) per stage, the
    batches of a stage concurrently (``max_parallel`` at a time, one API client each).

    A container that cannot be asked (`ProbeCallError`) gives the items with a step in that batch
    an ``error``; their later stages are not sent. Other items are not affected. With ``pods``
    (`conformance.kit.probes.lives.pod_lives`), an item with a step on a pod that was evicted,
    deleted, replaced or restarted meanwhile gets that as its ``error`` (its answers are no
    evidence, and the cause is named rather than the exec that failed because of it).
    """
    before = pods() if pods is not None else None
    responses: dict[str, dict[str, ProbeResponse]] = {p.nodeid: {} for p in plans}
    errors: dict[str, str] = {}
    stages = sorted({s.stage for p in plans for s in p.steps})
    Batch = list[tuple[str, Step]]  # (nodeid, step)

    def send(own: ProbeClient, where: tuple[str, str], batch: Batch) -> None:
        pod, container = where
        answers = own.call(pod, container, [step.request for _, step in batch])
        for (nodeid, step), answer in zip(batch, answers, strict=True):
            responses[nodeid][step.name] = answer

    def could_not_ask(batch: Batch, exc: ProbeCallError) -> None:
        for nodeid, step in batch:
            errors.setdefault(nodeid, f"step {step.name!r}: {exc}")

    for stage in stages:
        batches: dict[tuple[str, str], Batch] = {}
        for plan in plans:
            if plan.nodeid in errors:
                continue
            for step in plan.steps:
                if step.stage == stage:
                    batches.setdefault((step.pod, step.container), []).append((plan.nodeid, step))
        in_parallel(probe_client, batches, send, could_not_ask, max_parallel=max_parallel)
    after = pods() if pods is not None and before is not None else None
    if before is not None and after is not None:
        changed = changed_pods(before, after)
        for plan in plans:
            why = why_lost([p for s in plan.steps for p in (s.pod, *s.rests_on)], before, changed)
            if why is not None:
                errors[plan.nodeid] = f"{why} (during the prefetch)"
    return [
        ItemAnswers(
            nodeid=p.nodeid,
            nonce=p.nonce,
            steps=p.steps,
            responses=responses[p.nodeid],
            error=errors.get(p.nodeid),
        )
        for p in plans
    ]


# --- the prefetch's answers, shared by a run's processes -------------------------------------


def prefetch_once(
    run: RunInfo,
    items: Iterable[Any],
    probe_map: ProbeMap,
    client: ProbeClient,
    *,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
) -> dict[str, ItemAnswers]:
    """Plan and run every prefetched item's steps on the first call in the whole run (any
    process); later calls read the answers back. A prefetch that failed is not repeated: every
    later caller gets the same `PrefetchError`. ``pods``: see `run_prefetch`."""
    answers = once(
        run,
        PREFETCH_RECORD,
        lambda: run_prefetch(client, plan_for_items(items, probe_map, run.run_id), pods=pods),
        encode=lambda found: [a.to_dict() for a in found],
        decode=lambda raw: [ItemAnswers.from_dict(a) for a in raw],
        error=lambda cause: PrefetchError(f"the prefetch failed: {cause}"),
    )
    return {a.nodeid: a for a in answers}


def answers_for_item(
    answers: Mapping[str, ItemAnswers],
    item: Any,
    probe_map: ProbeMap,
    client: ProbeClient,
    run_id: str,
) -> ItemAnswers:
    """``item``'s answers: prefetched, or (an item the prefetch did not plan) from running its
    steps now. `PrefetchError` when a container of the item could not be asked."""
    found = answers.get(str(item.nodeid))
    if found is None:
        plan = plan_item(item, probe_map, run_id)
        if plan is None:
            raise ValueError(f"{item.nodeid} carries no {PREFETCH_MARKER} marker")
        (found,) = run_prefetch(client, [plan])
    if found.error is not None:
        raise PrefetchError(found.error)
    return found
