"""The staged prefetch of per-pod checks without a cluster: fake agents answer the batches.

Checked: stages run in order (a later stage sees the earlier one's writes); one batch per
container per stage; the batches of a stage run concurrently, each on its own client; every
process plans the same nonces and steps; a container that cannot be asked is could-not-test
for its items only; an unplanned item runs its own steps; the prefetch runs once per run
behind its lock file.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from recording_agents import RecordingAgents

from conformance.kit.agent_client import AgentError, AgentResponse
from conformance.kit.prefetch import (
    ItemAnswers,
    Prefetch,
    PrefetchError,
    Step,
    item_nonce,
    plan_for_items,
    prefetch_once,
    prefetched_by,
    run_prefetch,
)
from conformance.kit.probes import ProbeMap, RunInfo


@dataclass
class FakeAgents(RecordingAgents):
    """Each pod has one shared volume (a dict, as an emptyDir); ``broken``: (pod, container)
    whose exec fails; ``barrier``: every call waits there (a concurrency test)."""

    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (pod, path) -> sha256

    def call(
        self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]
    ) -> list[AgentResponse]:
        self.record(pod, container, requests)
        return [self._answer(pod, container, r) for r in requests]

    def _answer(self, pod: str, container: str, request: Mapping[str, Any]) -> AgentResponse:
        op = request["op"]
        if op == "write_file":
            digest = hashlib.sha256(str(request["seed"]).encode()).hexdigest()
            with self._lock:
                self.files[(pod, str(request["name"]))] = digest
            return {"ok": True, "op": op, "sha256": digest}
        if op == "read_file":
            found = self.files.get((pod, str(request["name"])))
            if found is None:
                return {"ok": False, "op": op, "errno": "ENOENT"}
            return {"ok": True, "op": op, "sha256": found}
        return {"ok": True, "op": op, "container": container}


PODS = ("probe-node-1", "probe-node-2", "probe-node-3")
NO_PROBES = ProbeMap(namespace="ns", probes=())


def volume_planner(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """As test_shared_volumes plans: write in the writer (stage 0), read in the reader (1)."""
    pod, writer, reader = params["pod"], params["writer"], params["reader"]
    name = f"f-{nonce}"
    return [
        Step("write", pod, writer, {"op": "write_file", "name": name, "seed": nonce}, stage=0),
        Step("read", pod, reader, {"op": "read_file", "name": name}, stage=1),
    ]


def info_planner(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    return [Step(f"{c}.info", params["pod"], c, {"op": "info"}) for c in ("a", "b")]


@prefetched_by(volume_planner)
def check_volume(pod: str, writer: str, reader: str) -> None:
    """A stand-in for a check function."""


@prefetched_by(info_planner)
def check_info(pod: str) -> None:
    """A stand-in for a check function."""


def check_unmarked(pod: str) -> None:
    """Not prefetched."""


@dataclass
class FakeCallSpec:
    params: Mapping[str, Any]


@dataclass
class FakeItem:
    nodeid: str
    function: Any
    callspec: FakeCallSpec | None


def volume_items() -> list[FakeItem]:
    return [
        FakeItem(
            f"test_v.py::check_volume[{w}->{r}-{pod}]",
            check_volume,
            FakeCallSpec({"pod": pod, "writer": w, "reader": r}),
        )
        for pod in PODS
        for w, r in (("a", "b"), ("b", "a"))
    ]


def info_items() -> list[FakeItem]:
    return [
        FakeItem(f"test_i.py::check_info[{pod}]", check_info, FakeCallSpec({"pod": pod}))
        for pod in PODS
    ]


def test_stages_run_in_order_and_later_stages_see_earlier_writes() -> None:
    agents = FakeAgents()
    plans = plan_for_items(volume_items(), NO_PROBES, "run-1")
    answers = run_prefetch(agents, plans)  # type: ignore[arg-type]
    ops = [op for _, _, batch in agents.calls for op in batch]
    assert ops.index("read_file") > max(i for i, op in enumerate(ops) if op == "write_file")
    assert len(answers) == 6
    for item in answers:
        assert item.error is None
        assert item["read"] == {"ok": True, "op": "read_file", "sha256": item["write"]["sha256"]}


def test_one_batch_per_container_per_stage() -> None:
    agents = FakeAgents()
    run_prefetch(agents, plan_for_items(volume_items(), NO_PROBES, "run-1"))  # type: ignore[arg-type]
    # 3 pods x 2 containers x 2 stages: one call each (writer's write, then reader's read).
    assert len(agents.calls) == 12
    assert len({(pod, c) for pod, c, _ in agents.calls}) == 6
    assert Counter(ops for _, _, ops in agents.calls) == {("write_file",): 6, ("read_file",): 6}
    # Another check's stage-0 requests join the same batches, in collection order.
    mixed = FakeAgents()
    plans = plan_for_items([*volume_items(), *info_items()], NO_PROBES, "run-1")
    run_prefetch(mixed, plans)  # type: ignore[arg-type]
    assert Counter(ops for _, _, ops in mixed.calls) == {
        ("write_file", "info"): 6,
        ("read_file",): 6,
    }


def test_batches_of_a_stage_run_concurrently_each_on_its_own_client() -> None:
    # Six batches in stage 0: all must be in flight at once to pass the barrier.
    agents = FakeAgents(barrier=threading.Barrier(6, timeout=10))
    answers = run_prefetch(agents, plan_for_items(info_items(), NO_PROBES, "r"), max_parallel=6)  # type: ignore[arg-type]
    assert all(a.error is None for a in answers)
    assert len(agents.threads) == 6
    assert agents.clones == agents.closed == 6


def test_every_process_plans_the_same_nonces_and_steps() -> None:
    first = plan_for_items(volume_items(), NO_PROBES, "run-1")
    second = plan_for_items(list(reversed(volume_items()))[::-1], NO_PROBES, "run-1")
    assert first == second
    nonces = [p.nonce for p in first]
    assert len(set(nonces)) == len(nonces)
    assert first[0].nonce == item_nonce("run-1", volume_items()[0].nodeid)
    assert plan_for_items(volume_items(), NO_PROBES, "run-2")[0].nonce != first[0].nonce


def test_unmarked_and_placeholder_items_are_not_planned() -> None:
    items = [
        FakeItem("t::check_unmarked[p]", check_unmarked, FakeCallSpec({"pod": "p"})),
        FakeItem("t::check_info[none]", check_info, FakeCallSpec({"pod": None})),
        *info_items(),
        info_items()[0],  # collected twice: planned once
    ]
    plans = plan_for_items(items, NO_PROBES, "r")
    assert [p.nodeid for p in plans] == [i.nodeid for i in info_items()]


def test_a_broken_container_makes_only_its_items_could_not_test() -> None:
    agents = FakeAgents(broken=frozenset({("probe-node-2", "a")}))
    plans = plan_for_items(volume_items(), NO_PROBES, "r")
    answers = {a.nodeid: a for a in run_prefetch(agents, plans)}  # type: ignore[arg-type]
    failed = {n for n, a in answers.items() if a.error is not None}
    # Writer a fails in stage 0; reader a fails in stage 1; other pods are untouched.
    assert failed == {
        "test_v.py::check_volume[a->b-probe-node-2]",
        "test_v.py::check_volume[b->a-probe-node-2]",
    }
    errored = answers["test_v.py::check_volume[a->b-probe-node-2]"]
    assert "container not running" in str(errored.error)
    assert "read" not in errored.responses  # its later stage was not sent
    assert all(a["read"]["ok"] for n, a in answers.items() if n not in failed)
    prefetch = Prefetch(answers, agents, NO_PROBES, "r")  # type: ignore[arg-type]
    item = volume_items()[2]
    with pytest.raises(AgentError, match=r"pod probe-node-2, container a"):
        prefetch.answers(item)
    assert prefetch.answers(volume_items()[0])["read"]["ok"]


def test_an_unplanned_item_runs_its_own_steps() -> None:
    agents = FakeAgents()
    prefetch = Prefetch({}, agents, NO_PROBES, "r")  # type: ignore[arg-type]
    item = volume_items()[0]
    answers = prefetch.answers(item)
    assert answers.nonce == item_nonce("r", item.nodeid)
    assert answers["read"]["ok"]
    assert answers["read"]["sha256"] == answers["write"]["sha256"]
    assert [(c, ops) for _, c, ops in agents.calls] == [
        ("a", ("write_file",)),
        ("b", ("read_file",)),
    ]
    with pytest.raises(ValueError, match="not prefetched_by"):
        prefetch.answers(FakeItem("t::u", check_unmarked, None))


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r", namespace="ns", shared_dir=str(tmp_path / "shared"))


def test_prefetch_once_computes_once_for_all_callers(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    computed: list[int] = []
    agents = FakeAgents()

    def compute() -> list[ItemAnswers]:
        computed.append(1)
        return run_prefetch(agents, plan_for_items(volume_items(), NO_PROBES, run.run_id))  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _i: prefetch_once(run, compute), range(4)))
    assert computed == [1]
    assert all(r == results[0] for r in results)
    assert len(results[0]) == 6


def test_a_failed_prefetch_is_not_repeated(tmp_path: Path) -> None:
    run = run_info(tmp_path)

    def boom() -> list[ItemAnswers]:
        raise RuntimeError("API server gone")

    with pytest.raises(RuntimeError):
        prefetch_once(run, boom)
    with pytest.raises(PrefetchError, match="API server gone"):
        prefetch_once(run, lambda: pytest.fail("must not compute again"))
