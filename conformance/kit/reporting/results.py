"""What a run reports besides pass/fail: each check's result (its outcome, place, tries and
its `RuleFailure`), the JSON summary, the exit codes' meanings.

Pure apart from ``write_summary``. The plugin's hooks feed ``SummaryCollector`` one report per
test phase (setup, call, teardown), with the `RuleFailure` the judge attached to a failed one,
and write the summary at the end of the session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import write_json_atomically
from conformance.kit.cluster.facts import ClusterFacts
from conformance.kit.verdicts.failures import (
    PLACE_KEYS,
    PLACE_PREFIX,
    Place,
    RuleFailure,
    first_line,
)

SUMMARY_SCHEMA = "netconform-summary/1"
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
PHASES = ("setup", "call", "teardown")
#: Failure messages in the summary are cut here; the full text stays in JUnit and the log.
MESSAGE_LIMIT = 4000
CNI_UNKNOWN = "unknown"

#: What each exit code of a run means (README "Exit codes"; the gate is `conformance.kit.run.session`).
EXIT_MEANINGS = {
    0: "every rule checked held, on every node asked for (the verdict names what was narrowed, "
    "sampled or skipped)",
    1: "a rule is broken",
    2: "could not test (a check could not run, the cluster or probes were unavailable, a node "
    "asked for was left out by the suite), or the run was interrupted",
    3: "pytest internal error",
    4: "usage error (a bad option)",
    5: "no tests collected",
}


def _count(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _ratio(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n... ({len(text) - limit} more characters in the JUnit report)"


@dataclass(frozen=True)
class CheckResult(JSONData):
    """The final outcome of one test, merged from its phases."""

    nodeid: str
    outcome: str
    duration: float
    rule: str = ""
    message: str | None = None
    #: Where the check looked (from its ``netconform.*`` place properties).
    place: Place = field(default_factory=Place)
    #: Network attempts made and lost (reachability checks).
    attempts: int | None = None
    losses: int | None = None
    #: Why the check was skipped (None unless it was).
    reason: str | None = None
    #: The source address a host outside the cluster saw (the edge checks): ``address``, and
    #: ``nat``: ``none`` (the pod's own IP), ``node`` (a node's address) or ``other``.
    source_seen: Mapping[str, str] | None = None
    #: Probes of its loss measurement, sent and lost; the worst exchange's lost share (0..1),
    #: and what each exchange lost (checks whose loss is measured).
    probes: int | None = None
    probes_lost: int | None = None
    loss_ratio: float | None = None
    loss: str | None = None
    #: The NetworkPolicy family: each judged step of the check's scenario (its cells, expected
    #: against observed, and how long it took to be in force); None for other checks.
    truth_tables: tuple[Mapping[str, Any], ...] | None = None
    #: What the check found wrong, as the judge found it (expected versus observed, where);
    #: for a check that could not test or stopped on an error, its cause as ``observed``.
    #: None when no phase of the check failed.
    failure: RuleFailure | None = None

    @property
    def lossy(self) -> bool:
        """Passed, though some of its probes were lost (fewer than ``--max-loss`` allows)."""
        return self.outcome == "passed" and bool(self.probes_lost)


@dataclass
class _Merging:
    rule: str = ""
    outcome: str | None = None
    duration: float = 0.0
    messages: list[str] = field(default_factory=list)
    call_outcomes: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    skip_reason: str | None = None
    failure: RuleFailure | None = None


def phase_outcome(when: str, outcome: str, *, wasxfail: bool = False) -> str:
    """What one phase report means for the test, as pytest's terminal summary counts it."""
    if when not in PHASES or outcome not in ("passed", "failed", "skipped"):
        raise ValueError(f"unknown phase report {when!r}/{outcome!r}")
    if outcome == "skipped":
        return "xfailed" if wasxfail else "skipped"
    if outcome == "failed":
        return "failed" if when == "call" else "error"
    return "xpassed" if wasxfail and when == "call" else "passed"


class SummaryCollector:
    """Merges per-phase reports into one ``CheckResult`` per test and remembers flaky tests.

    A teardown error after a pass makes the test an error; after a failure the test stays
    failed and the teardown text is appended. A test whose call phase was reported more than
    once with different outcomes (a rerun) is flaky; checks may also mark themselves flaky
    (e.g. "reachable only on the third try").
    """

    def __init__(self) -> None:
        self._tests: dict[str, _Merging] = {}
        self._flaky: dict[str, str] = {}

    def record_phase(
        self,
        nodeid: str,
        when: str,
        outcome: str,
        duration: float,
        *,
        message: str | None = None,
        rule: str = "",
        wasxfail: bool = False,
        properties: Mapping[str, object] | None = None,
        skip_reason: str | None = None,
        failure: RuleFailure | None = None,
    ) -> None:
        """One ``TestReport`` (``report.when``, ``report.outcome``, ``report.duration``, and its
        ``user_properties``; ``skip_reason`` for a skipped phase; ``failure``: the
        `RuleFailure` the plugin attached to a failed phase). The test's failure is the first
        one reported; a failed phase without one (an error that is no judgement) stands for
        itself with its text's first line as what was observed.

        Never raises on an outcome it does not know (it runs inside a report hook): a rerun
        plugin's ``rerun`` counts as an attempt, anything else is kept as reported.
        """
        test = self._tests.setdefault(nodeid, _Merging())
        test.rule = test.rule or rule
        for name, value in (properties or {}).items():
            if name.startswith(PLACE_PREFIX):
                test.properties[name.removeprefix(PLACE_PREFIX)] = str(value)
        test.duration += max(duration, 0.0)
        if skip_reason:
            test.skip_reason = test.skip_reason or skip_reason
        if message:
            test.messages.append(message if when == "call" else f"[{when}] {message}")
            if test.failure is None:
                test.failure = failure or RuleFailure(rule=test.rule, observed=first_line(message))
        if outcome == "rerun":
            test.call_outcomes.append("rerun")
            return
        try:
            meaning = phase_outcome(when, outcome, wasxfail=wasxfail)
        except ValueError:
            meaning = outcome
        if when == "call":
            test.call_outcomes.append(meaning)
            test.outcome = meaning
        elif when == "setup":
            # A failed or skipped setup decides the outcome: no call phase follows.
            if meaning != "passed" or test.outcome is None:
                test.outcome = meaning
        elif meaning == "error" and test.outcome not in ("failed", "xfailed"):
            # A teardown error spoils a pass or a skip; a failure stays a failure.
            test.outcome = "error"

    def mark_flaky(self, nodeid: str, reason: str) -> None:
        """Record that ``nodeid`` passed only after retries, with why."""
        self._flaky[nodeid] = reason

    def results(self) -> list[CheckResult]:
        """One result per test, in the order the tests first reported."""
        return [
            CheckResult(
                nodeid=nodeid,
                outcome=test.outcome or "error",
                duration=round(test.duration, 3),
                rule=test.rule,
                message=shorten("\n".join(test.messages)) if test.messages else None,
                place=Place.from_dict(
                    {k: v for k, v in test.properties.items() if k in PLACE_KEYS}
                ),
                attempts=_count(test.properties.get("attempts")),
                losses=_count(test.properties.get("losses")),
                reason=test.skip_reason if test.outcome == "skipped" else None,
                source_seen=_source_seen(test.properties),
                probes=_count(test.properties.get("probes")),
                probes_lost=_count(test.properties.get("probes_lost")),
                loss_ratio=_ratio(test.properties.get("loss_ratio")),
                loss=test.properties.get("loss"),
                truth_tables=_truth_tables(test.properties),
                failure=test.failure,
            )
            for nodeid, test in self._tests.items()
        ]

    def flaky(self) -> dict[str, str]:
        """nodeid -> reason, for marked tests and for reruns that changed outcome."""
        found = {
            nodeid: f"call outcomes across reruns: {', '.join(test.call_outcomes)}"
            for nodeid, test in self._tests.items()
            if len(set(test.call_outcomes)) > 1
        }
        found.update(self._flaky)
        return found


def _source_seen(properties: Mapping[str, str]) -> dict[str, str] | None:
    """The ``source_seen`` of a result, from its ``netconform.source_seen`` and
    ``netconform.source_nat`` properties (None without them)."""
    if "source_seen" not in properties:
        return None
    return {"address": properties["source_seen"], "nat": properties.get("source_nat", "")}


def _truth_tables(properties: Mapping[str, str]) -> tuple[Mapping[str, Any], ...] | None:
    """The ``truth_tables`` of a NetworkPolicy check, from its ``netconform.netpol_tables``
    property (JSON; None without it)."""
    raw = properties.get("netpol_tables")
    if raw is None:
        return None
    try:
        tables = json.loads(raw)
    except ValueError:
        return None
    return tuple(t for t in tables if isinstance(t, dict)) if isinstance(tables, list) else None


def flaky_line(nodeid: str, reason: str) -> str:
    """The terminal summary line of a flaky test, e.g. ``flaky: test_no_snat[udp-node-1->node-2]
    passed on attempt 2 of 3 (first: ETIMEDOUT ...)``."""
    return f"flaky: {nodeid.rsplit('::', 1)[-1]} {reason}"


def lossy_lines(results: Iterable[CheckResult]) -> list[str]:
    """The terminal summary lines of the checks that passed with lost probes, e.g. ``lossy:
    test_no_snat[udp-node-1->node-2] 2 of 100 probes lost (2.0 %)``."""
    return [
        f"lossy: {r.nodeid.rsplit('::', 1)[-1]} {r.loss or ''}".rstrip() for r in results if r.lossy
    ]


def count_outcomes(results: Iterable[CheckResult]) -> dict[str, int]:
    """Count per outcome (every known outcome present, zero when absent) plus ``total``."""
    totals = dict.fromkeys(OUTCOMES, 0)
    for result in results:
        totals[result.outcome] = totals.get(result.outcome, 0) + 1
    totals["total"] = sum(totals.values())
    return totals


def build_summary(
    results: Sequence[CheckResult],
    *,
    facts: ClusterFacts | None,
    flaky: Mapping[str, str],
    session_duration: float,
    generated_at: float | None = None,
) -> dict[str, Any]:
    """The JSON summary of a run: totals, cluster facts, every test, flaky tests."""
    stamp = time.gmtime(time.time() if generated_at is None else generated_at)
    return {
        "schema": SUMMARY_SCHEMA,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp),
        "duration": round(session_duration, 3),
        "totals": count_outcomes(results),
        "cluster": facts.to_dict() if facts is not None else None,
        "tests": [result.to_dict() for result in results],
        "flaky": [{"nodeid": nodeid, "reason": flaky[nodeid]} for nodeid in sorted(flaky)],
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented JSON, atomically; parents created."""
    return write_json_atomically(path, summary, indent=2)


def check_of(result: CheckResult) -> str:
    """The check (test function) a result belongs to: its ``check`` place, else the name in
    its node ID without parameters."""
    return result.place.check or result.nodeid.rsplit("::", 1)[-1].split("[", 1)[0]


def module_of(nodeid: str) -> str:
    """The file part of a node ID (``conformance/test_no_snat.py``)."""
    return nodeid.split("::", 1)[0]


def exit_meaning(code: int | None) -> str:
    """What a run's exit code means, for people (``unknown`` for codes we never set)."""
    if code is None:
        return "not recorded"
    return EXIT_MEANINGS.get(code, f"exit code {code}")


#: The JSON Schema of ``summary.json``, shipped in the ``conformance`` package.
SCHEMA_RESOURCE = "summary.schema.json"


def summary_schema() -> dict[str, Any]:
    """The JSON Schema ``summary.json`` follows (``conformance/summary.schema.json``)."""
    text = resources.files("conformance").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
