"""The rule table of a run: one row per rule of the network model (one check function each),
with its verdict (held, broken, could not test, skipped), counts, and the checks that failed.

Pure: built from the run's `CheckResult`s; ``summary.json`` carries the rows under ``rules``,
the HTML report draws them as its rule table and the terminal ends with one `rule_line` each.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from conformance.kit.pairs import natural_key
from conformance.kit.report import (
    OUTCOMES,
    CheckResult,
    check_of,
    count_outcomes,
    module_of,
    one_line,
)
from conformance.kit.serial import JSONData

RULE_HELD = "held"
RULE_BROKEN = "broken"
RULE_UNTESTED = "could not test"
RULE_SKIPPED = "skipped"
#: Rule verdicts, worst first (the order the headline and the terminal use).
RULE_STATUSES = (RULE_BROKEN, RULE_UNTESTED, RULE_HELD, RULE_SKIPPED)
#: How counts read, in this order: outcome -> words.
COUNT_WORDS = (
    ("failed", "failed"),
    ("error", "could not test"),
    ("passed", "passed"),
    ("skipped", "skipped"),
    ("xfailed", "xfailed"),
    ("xpassed", "xpassed"),
)
_PLACE_NODE_KEYS = ("source", "destination", "node")
#: Nodes a rule's focus sentence names before "and N more".
NODES_NAMED = 8


def anchor_for(kind: str, name: str) -> str:
    """An HTML id, ``kind-`` then ``name``: runs of anything but letters, digits and ``_``
    become one ``-``, and a name changed so gets a short digest of itself, so distinct names
    (node IDs) keep distinct, stable ids."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")
    if slug != name:
        slug += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{kind}-{slug}"


@dataclass(frozen=True)
class RuleSummary(JSONData):
    """One row of the rule table."""

    check: str
    module: str
    rule: str
    status: str
    #: Checks per outcome (every outcome of `conformance.kit.report.OUTCOMES`, and ``total``).
    counts: Mapping[str, int] = field(default_factory=dict)
    #: Checks that passed only on a retry.
    flaky: int = 0
    #: Checks that passed with some probes lost (under ``--max-loss``).
    lossy: int = 0
    #: Distinct reasons of the skipped checks.
    skip_reasons: tuple[str, ...] = ()
    #: Node IDs of the checks that failed (the rule is broken there) and that could not test.
    failed: tuple[str, ...] = ()
    could_not_test: tuple[str, ...] = ()
    #: Nodes named by the places of the failed checks, in node order; those named by every
    #: failed check; and one sentence on them (``every failure involves node-3 (as
    #: destination 4)``, or ``nodes node-1, node-2, node-3``).
    nodes: tuple[str, ...] = ()
    common_nodes: tuple[str, ...] = ()
    focus: str = ""

    @property
    def anchor(self) -> str:
        """The id of the rule's failures in the HTML report."""
        return anchor_for("rule", self.check)

    def counts_text(self) -> str:
        """``18 failed, 9 passed`` (zero counts left out), flaky ones added in brackets."""
        parts = [
            f"{self.counts.get(outcome, 0)} {words}"
            for outcome, words in COUNT_WORDS
            if self.counts.get(outcome, 0)
        ]
        text = ", ".join(parts) or "no checks"
        marks = [f"{n} {word}" for n, word in ((self.flaky, "flaky"), (self.lossy, "lossy")) if n]
        return text + (f" ({', '.join(marks)})" if marks else "")


def rule_status(counts: Mapping[str, int]) -> str:
    """A rule's verdict from its checks' outcomes: broken when any failed, else could not test
    when any errored, else held when any ran, else skipped."""
    if counts.get("failed", 0):
        return RULE_BROKEN
    if counts.get("error", 0):
        return RULE_UNTESTED
    if any(counts.get(o, 0) for o in ("passed", "xfailed", "xpassed")):
        return RULE_HELD
    return RULE_SKIPPED


def nodes_of(results: Sequence[CheckResult]) -> tuple[str, ...]:
    """Every node the results' places name, in node order."""
    found = {r.place[k] for r in results for k in _PLACE_NODE_KEYS if r.place.get(k)}
    return tuple(sorted(found, key=natural_key))


def _roles(result: CheckResult) -> dict[str, str]:
    """node -> its role in one check's place: source, destination, same node, or node."""
    place = result.place
    source, destination = place.get("source"), place.get("destination")
    if source and destination:
        if source == destination:
            return {source: "same node"}
        return {source: "source", destination: "destination"}
    return {place["node"]: "node"} if place.get("node") else {}


def failure_focus(failed: Sequence[CheckResult]) -> tuple[tuple[str, ...], str]:
    """(nodes in every failed check, a sentence naming where the failures are)."""
    roles = [_roles(r) for r in failed]
    if not roles or not all(roles):
        return (), ""
    common = set(roles[0]).intersection(*roles[1:])
    ordered = sorted(common, key=natural_key)
    if ordered:

        def how(node: str) -> str:
            counts = Counter(r[node] for r in roles)
            return ", ".join(f"as {role} {n}" for role, n in sorted(counts.items()))

        named = " and ".join(f"{n} ({how(n)})" for n in ordered[:NODES_NAMED])
        return tuple(ordered), f"every failure involves {named}"
    involved = sorted({n for r in roles for n in r}, key=natural_key)
    shown = ", ".join(involved[:NODES_NAMED])
    more = f" and {len(involved) - NODES_NAMED} more" if len(involved) > NODES_NAMED else ""
    return (), f"nodes {shown}{more}"


def summarize_rules(
    results: Sequence[CheckResult], flaky: Mapping[str, str] | None = None
) -> list[RuleSummary]:
    """One `RuleSummary` per check function, in the order the checks first reported."""
    by_check: dict[str, list[CheckResult]] = {}
    for result in results:
        by_check.setdefault(check_of(result), []).append(result)
    flaky = flaky or {}
    rules = []
    for check, checked in by_check.items():
        counts = count_outcomes(checked)
        failed = [r for r in checked if r.outcome == "failed"]
        common, focus = failure_focus(failed)
        rules.append(
            RuleSummary(
                check=check,
                module=module_of(checked[0].nodeid),
                rule=next((r.rule for r in checked if r.rule), ""),
                status=rule_status(counts),
                counts={k: counts.get(k, 0) for k in (*OUTCOMES, "total")},
                flaky=sum(1 for r in checked if r.outcome == "passed" and r.nodeid in flaky),
                lossy=sum(1 for r in checked if r.lossy),
                skip_reasons=tuple(dict.fromkeys(one_line(r.reason) for r in checked if r.reason)),
                failed=tuple(r.nodeid for r in failed),
                could_not_test=tuple(r.nodeid for r in checked if r.outcome == "error"),
                nodes=nodes_of(failed),
                common_nodes=common,
                focus=focus,
            )
        )
    return rules


def rule_line(rule: RuleSummary) -> str:
    """The terminal line of a rule: ``BROKEN          test_no_snat: 18 failed, 9 passed; nodes
    node-1, node-2, node-3``."""
    line = f"{rule.status.upper():<15} {rule.check}: {rule.counts_text()}"
    if rule.status == RULE_BROKEN and rule.focus:
        line += f"; {rule.focus}"
    if rule.skip_reasons and rule.status == RULE_SKIPPED:
        line += f" ({one_line('; '.join(rule.skip_reasons), 160)})"
    return line


def verdict_line(rules: Sequence[RuleSummary]) -> str:
    """One sentence over every rule: ``1 of 17 rules broken, 16 held`` (worst first)."""
    if not rules:
        return "no rule was checked"
    counted = {s: sum(1 for r in rules if r.status == s) for s in RULE_STATUSES}
    worst = next(s for s in RULE_STATUSES if counted[s])
    rest = ", ".join(f"{counted[s]} {s}" for s in RULE_STATUSES if counted[s] and s != worst)
    if counted[worst] == len(rules):
        head = f"the only rule {worst}" if len(rules) == 1 else f"all {len(rules)} rules {worst}"
    else:
        head = f"{counted[worst]} of {len(rules)} rules {worst}"
    return f"{head}, {rest}" if rest else head
