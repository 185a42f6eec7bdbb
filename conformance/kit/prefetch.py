"""Staged, batched, concurrent agent requests for the per-pod checks: one prefetch per run.

A check marked `prefetched_by` a planner names the agent requests of each of its test items
(`Step`: pod, container, request, stage). Once per run the prefetch plans every selected
item's steps and runs them stage by stage (0, then 1, ...): within a stage, ONE agent ``call``
batch per (pod, container) holding all that container's requests of the stage, the batches of
all containers concurrently (`conformance.kit.parallel.in_parallel`). A later stage sees the
effects of the earlier ones (a file written in stage 0 is read in stage 1).

Each item's nonce is derived from the run id and the item's node id (`item_nonce`), so every
process plans identical requests; the answers are stored as JSON in ``RunInfo.shared_dir``
behind a lock file (`prefetch_once`), and xdist workers read the same answers. A container
that cannot be asked makes only the items with a step there COULD NOT TEST. An item the
prefetch did not plan runs its own steps when it asks (`Prefetch.answers`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from conformance.kit.agent_client import AgentClient, AgentError, AgentResponse
from conformance.kit.parallel import in_parallel
from conformance.kit.probes import ProbeMap, RunInfo, run_lock

#: Concurrent agent calls of a stage (one per container).
MAX_PARALLEL_CALLS = 16
#: Attribute a test function carries when its agent requests come from the prefetch.
PLANNER_ATTRIBUTE = "netconform_prefetch_planner"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Step:
    """One named agent request of a test item, sent in ``stage`` (lower stages run first)."""

    name: str
    pod: str
    container: str
    request: Mapping[str, Any]
    stage: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pod": self.pod,
            "container": self.container,
            "request": dict(self.request),
            "stage": self.stage,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Step:
        return cls(
            name=str(raw["name"]),
            pod=str(raw["pod"]),
            container=str(raw["container"]),
            request=dict(raw["request"]),
            stage=int(raw["stage"]),
        )


#: ``planner(params, probe_map, nonce)``: the steps of one test item.
Planner = Callable[[Mapping[str, Any], ProbeMap, str], list[Step]]


@dataclass(frozen=True)
class ItemPlan:
    """A test item's nonce and steps (step names unique within the item)."""

    nodeid: str
    nonce: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class ItemAnswers:
    """What the agents answered to one item's steps, by step name.

    ``error`` set: a container of the item could not be asked (could not test); ``responses``
    then holds what was answered before.
    """

    nodeid: str
    nonce: str
    steps: tuple[Step, ...]
    responses: Mapping[str, AgentResponse] = field(default_factory=dict)
    error: str | None = None

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def __getitem__(self, name: str) -> AgentResponse:
        return self.responses[name]

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "nonce": self.nonce,
            "steps": [s.as_dict() for s in self.steps],
            "responses": dict(self.responses),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ItemAnswers:
        return cls(
            nodeid=str(raw["nodeid"]),
            nonce=str(raw["nonce"]),
            steps=tuple(Step.from_dict(s) for s in raw["steps"]),
            responses={str(k): dict(v) for k, v in raw["responses"].items()},
            error=raw.get("error"),
        )


def prefetched_by(planner: Planner) -> Callable[[F], F]:
    """Mark a check whose agent requests come from the run's prefetch: ``planner(params,
    probe_map, nonce)`` gives the steps of one test item from its parameters."""

    def mark(function: F) -> F:
        setattr(function, PLANNER_ATTRIBUTE, planner)
        return function

    return mark


def item_nonce(run_id: str, nodeid: str) -> str:
    """The item's nonce: the same in every process of a run, different between items."""
    digest = hashlib.sha256(f"{run_id}\0{nodeid}".encode()).hexdigest()
    return f"nc-{digest[:16]}"


def plan_item(item: Any, probe_map: ProbeMap, run_id: str) -> ItemPlan | None:
    """The plan of one test item (read duck-typed: ``nodeid``, ``function``, optional
    ``callspec.params``); None when its function is not `prefetched_by` a planner or the item
    is a placeholder (a parameter is None: cluster unavailable, not applicable)."""
    planner = getattr(getattr(item, "function", None), PLANNER_ATTRIBUTE, None)
    if planner is None:
        return None
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
    return ItemPlan(nodeid=nodeid, nonce=nonce, steps=steps)


def plan_for_items(items: Iterable[Any], probe_map: ProbeMap, run_id: str) -> list[ItemPlan]:
    """The plans of every collected item whose function is `prefetched_by` a planner, in
    collection order (an item collected twice is planned once)."""
    plans: dict[str, ItemPlan] = {}
    for item in items:
        plan = plan_item(item, probe_map, run_id)
        if plan is not None:
            plans.setdefault(plan.nodeid, plan)
    return list(plans.values())


def run_prefetch(
    agents: AgentClient, plans: Sequence[ItemPlan], *, max_parallel: int = MAX_PARALLEL_CALLS
) -> list[ItemAnswers]:
    """Run every plan's steps: stage by stage, one batch per (pod, container) per stage, the
    batches of a stage concurrently (``max_parallel`` at a time, one API client each).

    A container that cannot be asked (`AgentError`) gives the items with a step in that batch
    an ``error``; their later stages are not sent. Other items are not affected.
    """
    responses: dict[str, dict[str, AgentResponse]] = {p.nodeid: {} for p in plans}
    errors: dict[str, str] = {}
    stages = sorted({s.stage for p in plans for s in p.steps})
    Batch = list[tuple[str, Step]]  # (nodeid, step)

    def send(own: AgentClient, where: tuple[str, str], batch: Batch) -> None:
        pod, container = where
        answers = own.call(pod, container, [step.request for _, step in batch])
        for (nodeid, step), answer in zip(batch, answers, strict=True):
            responses[nodeid][step.name] = answer

    def could_not_ask(batch: Batch, exc: AgentError) -> None:
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
        in_parallel(agents, batches, send, could_not_ask, max_parallel=max_parallel)
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


class PrefetchError(AgentError):
    """The prefetch as a whole could not run: every check needing it could not test."""

    def __init__(self, message: str) -> None:
        super().__init__(message, pod="-", container="-")


class ItemCouldNotTest(AgentError):
    """A container of the item could not be asked; the message already names it."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.pod = "-"
        self.container = "-"
        self.stderr = ""


@dataclass
class Prefetch:
    """The run's prefetched answers by item node id, and what an unplanned item needs to run
    its own steps."""

    answers_by_item: Mapping[str, ItemAnswers]
    agents: AgentClient
    probe_map: ProbeMap
    run_id: str

    def answers(self, item: Any) -> ItemAnswers:
        """``item``'s answers: prefetched, or (an item the prefetch did not plan) from running
        its steps now. `AgentError` when a container of the item could not be asked."""
        found = self.answers_by_item.get(str(item.nodeid))
        if found is None:
            plan = plan_item(item, self.probe_map, self.run_id)
            if plan is None:
                raise ValueError(f"{item.nodeid} is not prefetched_by a planner")
            (found,) = run_prefetch(self.agents, [plan])
        if found.error is not None:
            raise ItemCouldNotTest(found.error)
        return found


def prefetch_paths(run: RunInfo) -> tuple[Path, Path]:
    shared = Path(run.shared_dir)
    return shared / "prefetch.json", shared / "prefetch.lock"


def prefetch_once(run: RunInfo, compute: Callable[[], list[ItemAnswers]]) -> dict[str, ItemAnswers]:
    """Compute the answers on the first call in the whole run (any process, behind a lock
    file, like `conformance.kit.reachability.sweep_once`); later calls read them back.

    A prefetch that failed is not repeated: every later caller gets the same `PrefetchError`.
    """
    state_path, lock_path = prefetch_paths(run)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(lock_path):
        if state_path.exists():
            raw = json.loads(state_path.read_text())
            if raw.get("error"):
                raise PrefetchError(str(raw["error"]))
            return {a.nodeid: a for a in map(ItemAnswers.from_dict, raw["items"])}
        try:
            answers = compute()
        except BaseException as exc:
            _write(state_path, {"error": f"the prefetch failed: {exc!r}"})
            raise
        _write(state_path, {"items": [a.as_dict() for a in answers]})
        return {a.nodeid: a for a in answers}


def _write(path: Path, raw: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, sort_keys=True))
    tmp.replace(path)
