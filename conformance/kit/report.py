"""What a run reports besides pass/fail: cluster facts, the JSON summary, rule failure text.

Pure apart from ``write_summary``. The plugin's hooks feed ``SummaryCollector`` one report per
test phase (setup, call, teardown) and write the summary at the end of the session; the
checks build their ``pytest.fail`` text with ``format_rule_failure``.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_SCHEMA = "netconform-summary/1"
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
PHASES = ("setup", "call", "teardown")
#: Failure messages in the summary are cut here; the full text stays in JUnit and the log.
MESSAGE_LIMIT = 4000
#: JUnit property of a check that passed only on a retry; its value says how.
FLAKY_PROPERTY = "netconform.flaky"


@dataclass(frozen=True)
class ClusterFacts:
    """Facts about the cluster under test, shown in JUnit properties and the JSON summary."""

    server_version: str
    node_count: int
    nodes_tested: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    service_cidr: str | None
    ip_families: tuple[str, ...]
    probe_image: str

    def junit_properties(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs for ``record_testsuite_property``, names ``netconform.*``."""
        return [
            ("netconform.server_version", self.server_version),
            ("netconform.node_count", str(self.node_count)),
            ("netconform.nodes_tested", ",".join(self.nodes_tested) or "none"),
            ("netconform.pod_cidrs", ",".join(self.pod_cidrs) or "none"),
            ("netconform.service_cidr", self.service_cidr or "unknown"),
            ("netconform.ip_families", ",".join(self.ip_families) or "unknown"),
            ("netconform.probe_image", self.probe_image),
        ]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (tuples as lists)."""
        return {
            "server_version": self.server_version,
            "node_count": self.node_count,
            "nodes_tested": list(self.nodes_tested),
            "pod_cidrs": list(self.pod_cidrs),
            "service_cidr": self.service_cidr,
            "ip_families": list(self.ip_families),
            "probe_image": self.probe_image,
        }


def rule_from_docstring(doc: str | None) -> str:
    """The rule a check states: the first paragraph of its docstring, on one line."""
    if not doc:
        return ""
    first_paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(first_paragraph.split())


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n... ({len(text) - limit} more characters in the JUnit report)"


@dataclass(frozen=True)
class CheckResult:
    """The final outcome of one test, merged from its phases."""

    nodeid: str
    outcome: str
    duration: float
    rule: str = ""
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "duration": round(self.duration, 3),
            "rule": self.rule,
            "message": self.message,
        }


@dataclass
class _Merging:
    rule: str = ""
    outcome: str | None = None
    duration: float = 0.0
    messages: list[str] = field(default_factory=list)
    call_outcomes: list[str] = field(default_factory=list)


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
    ) -> None:
        """One ``TestReport`` (``report.when``, ``report.outcome``, ``report.duration``).

        Never raises on an outcome it does not know (it runs inside a report hook): a rerun
        plugin's ``rerun`` counts as an attempt, anything else is kept as reported.
        """
        test = self._tests.setdefault(nodeid, _Merging())
        test.rule = test.rule or rule
        test.duration += max(duration, 0.0)
        if message:
            test.messages.append(message if when == "call" else f"[{when}] {message}")
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
                duration=test.duration,
                rule=test.rule,
                message=shorten("\n".join(test.messages)) if test.messages else None,
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


def flaky_line(nodeid: str, reason: str) -> str:
    """The terminal summary line of a flaky test, e.g. ``flaky: test_no_snat[udp-node-1->node-2]
    passed on attempt 2 of 3 (first: ETIMEDOUT ...)``."""
    return f"flaky: {nodeid.rsplit('::', 1)[-1]} {reason}"


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
        "cluster": facts.as_dict() if facts is not None else None,
        "tests": [result.as_dict() for result in results],
        "flaky": [{"nodeid": nodeid, "reason": flaky[nodeid]} for nodeid in sorted(flaky)],
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented JSON; atomic (temp file + rename), parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path


def pod_label(namespace: str, name: str, node: str | None = None) -> str:
    """``namespace/name (node N)``: how failure text names a pod."""
    where = f" (node {node})" if node else ""
    return f"{namespace}/{name}{where}"


def format_rule_failure(
    rule: str,
    *,
    expected: str,
    observed: str,
    protocol: str | None = None,
    pods: Sequence[str] = (),
    nodes: Sequence[str] = (),
    details: Sequence[str] = (),
) -> str:
    """The message of a broken rule, for ``pytest.fail(..., pytrace=False)``.

    First line: the rule. Then where (protocol, pods, nodes), expected versus observed, and
    any details (probe output, events), one per line.
    """
    lines = [f"RULE BROKEN: {rule}"]
    if protocol:
        lines.append(f"  protocol: {protocol}")
    if pods:
        lines.append(f"  pods:     {' -> '.join(pods)}")
    if nodes:
        lines.append(f"  nodes:    {', '.join(nodes)}")
    lines.append(f"  expected: {expected}")
    lines.append(f"  observed: {observed}")
    lines.extend(f"  {detail}" for detail in details)
    return "\n".join(lines)
