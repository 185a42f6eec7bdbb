"""`conformance.kit.exchanges.prefetch` without a cluster: fake probe clients answer the batches.

Checked: a check's planner travels on its ``prefetched_by`` marker; stages run in order (a
later stage sees the earlier one's writes); one batch per container per stage; the batches of
a stage run concurrently, each on its own client; every process plans the same nonces and
steps; a container that cannot be asked is could-not-test for its items only; an unplanned
item runs its own steps; the prefetch runs once per run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_items import item
from fake_probes import NO_PROBES, FakeProbeClient
from prefetch_checks import (
    check_info,
    check_unmarked,
    check_volume,
    info_items,
    volume_items,
    volume_planner,
)

from conformance.kit.base.errors import CouldNotTest, PrefetchError
from conformance.kit.base.runstate import RunInfo
from conformance.kit.exchanges.prefetch import (
    PREFETCH_MARKER,
    ItemAnswers,
    Step,
    answers_for_item,
    item_nonce,
    plan_for_items,
    plan_item,
    prefetch_once,
    prefetched_by,
    run_prefetch,
)
from conformance.kit.probes.model import ProbeMap


def test_the_planner_travels_on_the_marker() -> None:
    mark = check_volume.pytestmark[0]  # type: ignore[attr-defined]
    assert (mark.name, mark.args) == (PREFETCH_MARKER, (volume_planner,))
    first = volume_items()[0]
    plan = plan_item(first, NO_PROBES, "run-1")
    assert first.asked == [
        PREFETCH_MARKER
    ]  # read with get_closest_marker, as pytest's items answer
    assert plan is not None
    assert [s.name for s in plan.steps] == ["write", "read"]


def test_stages_run_in_order_and_later_stages_see_earlier_writes() -> None:
    probes = FakeProbeClient()
    plans = plan_for_items(volume_items(), NO_PROBES, "run-1")
    answers = run_prefetch(probes, plans)  # type: ignore[arg-type]
    ops = [op for _, _, batch in probes.calls for op in batch]
    assert ops.index("read_file") > max(i for i, op in enumerate(ops) if op == "write_file")
    assert len(answers) == 6
    for answered in answers:
        assert answered.error is None
        assert answered["read"] == {
            "ok": True,
            "op": "read_file",
            "sha256": answered["write"]["sha256"],
        }


def test_one_batch_per_container_per_stage() -> None:
    probes = FakeProbeClient()
    run_prefetch(probes, plan_for_items(volume_items(), NO_PROBES, "run-1"))  # type: ignore[arg-type]
    # 3 pods x 2 containers x 2 stages: one call each (writer's write, then reader's read).
    assert len(probes.calls) == 12
    assert len({(pod, c) for pod, c, _ in probes.calls}) == 6
    assert Counter(ops for _, _, ops in probes.calls) == {("write_file",): 6, ("read_file",): 6}
    # Another check's stage-0 requests join the same batches, in collection order.
    mixed = FakeProbeClient()
    plans = plan_for_items([*volume_items(), *info_items()], NO_PROBES, "run-1")
    run_prefetch(mixed, plans)  # type: ignore[arg-type]
    assert Counter(ops for _, _, ops in mixed.calls) == {
        ("write_file", "info"): 6,
        ("read_file",): 6,
    }


def test_batches_of_a_stage_run_concurrently_each_on_its_own_client() -> None:
    # Six batches in stage 0: all must be in flight at once to pass the barrier.
    probes = FakeProbeClient(barrier=threading.Barrier(6, timeout=10))
    plans = plan_for_items(info_items(), NO_PROBES, "r")
    answers = run_prefetch(probes, plans, max_parallel=6)  # type: ignore[arg-type]
    assert all(a.error is None for a in answers)
    assert len(probes.threads) == 6
    assert probes.clones == probes.closed == 6


def test_every_process_plans_the_same_nonces_and_steps() -> None:
    first = plan_for_items(volume_items(), NO_PROBES, "run-1")
    second = plan_for_items(volume_items(), NO_PROBES, "run-1")
    assert first == second
    nonces = [p.nonce for p in first]
    assert len(set(nonces)) == len(nonces)
    assert first[0].nonce == item_nonce("run-1", volume_items()[0].nodeid)
    assert plan_for_items(volume_items(), NO_PROBES, "run-2")[0].nonce != first[0].nonce


def test_unmarked_and_placeholder_items_are_not_planned() -> None:
    items = [
        item("t::check_unmarked[p]", check_unmarked, pod="p"),
        item("t::check_info[none]", check_info, pod=None),
        *info_items(),
        info_items()[0],  # collected twice: planned once
    ]
    plans = plan_for_items(items, NO_PROBES, "r")
    assert [p.nodeid for p in plans] == [i.nodeid for i in info_items()]


def test_repeated_step_names_are_refused() -> None:
    def twice(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
        return [Step("info", "p", "a", {"op": "info"}), Step("info", "p", "b", {"op": "info"})]

    @prefetched_by(twice)
    def check_twice(pod: str) -> None:
        """Names two steps alike."""

    with pytest.raises(ValueError, match="step names repeat"):
        plan_item(item("t::check_twice[p]", check_twice, pod="p"), NO_PROBES, "r")


def test_a_broken_container_makes_only_its_items_could_not_test() -> None:
    probes = FakeProbeClient(broken=frozenset({("probe-node-2", "a")}))
    plans = plan_for_items(volume_items(), NO_PROBES, "r")
    answers = {a.nodeid: a for a in run_prefetch(probes, plans)}  # type: ignore[arg-type]
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
    with pytest.raises(PrefetchError, match=r"pod probe-node-2, container a") as raised:
        answers_for_item(answers, volume_items()[2], NO_PROBES, probes, "r")  # type: ignore[arg-type]
    assert isinstance(raised.value, CouldNotTest)
    assert answers_for_item(answers, volume_items()[0], NO_PROBES, probes, "r")["read"]["ok"]  # type: ignore[arg-type]


def test_an_unplanned_item_runs_its_own_steps() -> None:
    probes = FakeProbeClient()
    late = volume_items()[0]
    answers = answers_for_item({}, late, NO_PROBES, probes, "r")  # type: ignore[arg-type]
    assert answers.nonce == item_nonce("r", late.nodeid)
    assert answers["read"]["ok"]
    assert answers["read"]["sha256"] == answers["write"]["sha256"]
    assert [(c, ops) for _, c, ops in probes.calls] == [
        ("a", ("write_file",)),
        ("b", ("read_file",)),
    ]
    with pytest.raises(ValueError, match=f"carries no {PREFETCH_MARKER} marker"):
        answers_for_item({}, item("t::u", check_unmarked), NO_PROBES, probes, "r")  # type: ignore[arg-type]


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r", namespace="ns", shared_dir=str(tmp_path / "shared"))


def test_prefetch_once_runs_once_for_all_callers(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    probes = FakeProbeClient()
    callers = 4
    everyone_asks = threading.Barrier(callers, timeout=10)
    results: list[dict[str, ItemAnswers]] = []

    def ask() -> None:
        everyone_asks.wait()
        results.append(prefetch_once(run, volume_items(), NO_PROBES, probes))  # type: ignore[arg-type]

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(probes.calls) == 12  # one prefetch's batches, for everyone
    assert len(results) == callers
    assert all(r == results[0] for r in results)
    assert sorted(results[0]) == sorted(i.nodeid for i in volume_items())
    assert results[0][volume_items()[0].nodeid].nonce == item_nonce(
        run.run_id, volume_items()[0].nodeid
    )


def test_a_failed_prefetch_is_not_repeated(tmp_path: Path) -> None:
    run = run_info(tmp_path)

    class Gone(FakeProbeClient):
        def call(self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]) -> Any:
            self.record(pod, container, requests)
            raise RuntimeError("API server gone")

    gone = Gone()
    with pytest.raises(RuntimeError):
        prefetch_once(run, volume_items(), NO_PROBES, gone)  # type: ignore[arg-type]
    asked = len(gone.calls)
    with pytest.raises(PrefetchError, match="the prefetch failed: API server gone"):
        prefetch_once(run, volume_items(), NO_PROBES, gone)  # type: ignore[arg-type]
    assert len(gone.calls) == asked
