"""`conformance.kit.base.runstate`: the run's shared records. ``once`` computes in one process of the
whole run while the others wait on the run's lock and read what it wrote; a failure is recorded
and handed to later callers as the caller's own could-not-test error; a process that died
midway leaves a record that says so (and no lock held)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conformance.kit.base import runstate
from conformance.kit.base.errors import CouldNotTest, PrefetchError, SweepError
from conformance.kit.base.runstate import RunInfo, once

ROOT = Path(__file__).resolve().parents[2]
NAME = "thing"


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r", namespace="ns", shared_dir=str(tmp_path / "shared"))


def identity(value: Any) -> Any:
    return value


# A process of the run asking for the record: it says it has arrived, then asks. Whoever takes
# the lock first holds it, computing, until every racer has arrived, so every other racer asks
# while the computation runs.
RACER = """
import json, sys
from pathlib import Path
from tenacity import Retrying, stop_after_delay, wait_fixed
from conformance.kit.base.errors import SweepError
from conformance.kit.base.runstate import RunInfo, once

shared, me, racers = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = RunInfo(run_id="r", namespace="ns", shared_dir=shared)
arrived = Path(shared) / "arrived"
arrived.mkdir(parents=True, exist_ok=True)
(arrived / me).touch()

def compute():
    for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.02), reraise=True):
        with attempt:
            assert len(list(arrived.iterdir())) == racers, "not every racer has arrived"
    with (Path(shared) / "computed-by").open("a") as log:
        log.write(me + "\\n")
    return {"computed_by": me, "pids": [1, 2, 3]}

value = once(run, "thing", compute, encode=lambda v: v, decode=lambda raw: raw, error=SweepError)
print(json.dumps(value))
"""


def test_once_computes_once_across_processes(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    racers = 3
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, run.shared_dir, f"racer-{i}", str(racers)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(racers)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    computed_by = (Path(run.shared_dir) / "computed-by").read_text().split()
    assert len(computed_by) == 1
    assert results == [{"computed_by": computed_by[0], "pids": [1, 2, 3]}] * racers
    assert runstate.read_value(run, NAME, identity) == results[0]


def test_once_computes_once_across_threads(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    callers = 8
    everyone_asks = threading.Barrier(callers, timeout=10)
    computed: list[int] = []
    results: list[tuple[int, ...]] = []

    def compute() -> tuple[int, ...]:
        computed.append(1)
        return (1, 2, 3)

    def ask() -> None:
        everyone_asks.wait()
        results.append(once(run, NAME, compute, encode=list, decode=tuple, error=SweepError))

    threads = [threading.Thread(target=ask) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [1]
    assert results == [(1, 2, 3)] * callers  # the first caller's own value, the rest decoded


def test_the_first_caller_gets_its_own_value_later_callers_the_decoded_one(
    tmp_path: Path,
) -> None:
    run = run_info(tmp_path)
    made = {"n": 1}
    first = once(
        run, NAME, lambda: made, encode=lambda v: {"wrapped": v}, decode=dict, error=SweepError
    )
    assert first is made
    later = once(
        run,
        NAME,
        lambda: pytest.fail("must not compute again"),
        encode=lambda v: v,
        decode=lambda raw: raw["wrapped"],
        error=SweepError,
    )
    assert later == made
    assert later is not made
    record = runstate.peek(run, NAME)
    assert record == runstate.Record(status=runstate.DONE, value={"wrapped": {"n": 1}})


def test_a_failure_is_recorded_and_raised_as_the_given_error_for_later_callers(
    tmp_path: Path,
) -> None:
    run = run_info(tmp_path)
    cause = RuntimeError("API server gone")

    def boom() -> int:
        raise cause

    with pytest.raises(RuntimeError) as first:
        once(run, NAME, boom, encode=identity, decode=identity, error=SweepError)
    assert first.value is cause  # the first caller's own exception, unchanged
    for error in (SweepError, PrefetchError):
        with pytest.raises(error, match=r"^API server gone$") as later:
            once(
                run,
                NAME,
                lambda: pytest.fail("must not compute again"),
                encode=identity,
                decode=identity,
                error=error,
            )
        assert isinstance(later.value, CouldNotTest)
    record = runstate.peek(run, NAME)
    assert record == runstate.Record(status=runstate.FAILED, error="API server gone")
    assert runstate.read_value(run, NAME, identity) is None


class SilentError(Exception):
    """Raised without a message."""


@pytest.mark.parametrize(
    "raised",
    [pytest.param(KeyboardInterrupt, id="interrupt"), pytest.param(SilentError, id="silent")],
)
def test_an_interrupt_or_a_silent_exception_is_recorded_too(
    tmp_path: Path, raised: type[BaseException]
) -> None:
    run = run_info(tmp_path)

    def failing() -> int:
        raise raised

    with pytest.raises(raised):
        once(run, "a", failing, encode=identity, decode=identity, error=SweepError)
    with pytest.raises(SweepError, match=rf"{raised.__name__}\(\)"):
        once(run, "a", lambda: 1, encode=identity, decode=identity, error=SweepError)


DIES_MIDWAY = """
import os, sys
from conformance.kit.base.errors import SweepError
from conformance.kit.base.runstate import RunInfo, once

run = RunInfo(run_id="r", namespace="ns", shared_dir=sys.argv[1])
once(run, "thing", lambda: os._exit(3), encode=lambda v: v, decode=lambda v: v, error=SweepError)
"""


def test_a_process_that_died_midway_leaves_a_record_saying_so(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    died = subprocess.run(
        [sys.executable, "-c", DIES_MIDWAY, run.shared_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert died.returncode == 3, died.stderr
    assert runstate.peek(run, NAME) == runstate.Record(status=runstate.STARTED)
    # The kernel dropped the dead holder's lock: taking it now does not block.
    lock = run.path(NAME).with_suffix(".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    with pytest.raises(SweepError, match=f"an earlier {NAME} in this run died midway"):
        once(run, NAME, lambda: 1, encode=identity, decode=identity, error=SweepError)
    assert runstate.read_value(run, NAME, identity) is None


def test_write_peek_and_read_value(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    assert runstate.peek(run, "discovery") is None
    assert runstate.read_value(run, "discovery", identity) is None
    runstate.write(run, "discovery", {"nodes": ["a"]})
    assert runstate.read_value(run, "discovery", lambda raw: tuple(raw["nodes"])) == ("a",)
    # A record that no longer decodes reads as absent, not as an error at the end of a run.
    assert runstate.read_value(run, "discovery", lambda raw: raw["missing"]) is None
    assert run.path("discovery") == Path(run.shared_dir) / "discovery.json"


def test_write_json_atomically_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "out.json"
    assert runstate.write_json_atomically(path, {"b": 1, "a": (1, 2)}) == path
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    runstate.write_json_atomically(path, {"c": 3}, indent=2)
    assert path.read_text() == '{\n  "c": 3\n}\n'
    assert os.listdir(path.parent) == ["out.json"]


def test_run_info_travels_to_workers() -> None:
    run = RunInfo(run_id="r", namespace="netconform-r-x", shared_dir="/tmp/netconform-x")
    assert RunInfo.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert runstate.as_mapping({"a": 1}) == {"a": 1}
    assert runstate.as_mapping(["a"]) == {}
