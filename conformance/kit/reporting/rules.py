"""The rule table of a run: one row per rule of the network model (one check function each),
with its verdict (held, broken, could not test, xfailed, skipped), counts, and the checks that
failed; and the run's verdict (`Verdict`): one line over every rule that says "every rule held"
only when every rule held on every node the user asked for, in every family the cluster
declares, with every pair, and otherwise what was not checked.

Pure: built from the run's `CheckResult`s and its `Coverage`; ``summary.json`` carries the rows
under ``rules`` and the verdict under ``verdict``, the HTML report draws both and the terminal
ends with the verdict and one `rule_line` per rule.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from conformance.kit.base.jsondata import JSONData
from conformance.kit.cluster.families import FamilyPlan, family_name
from conformance.kit.cluster.nodes import Exclusion
from conformance.kit.cluster.pairs import natural_key
from conformance.kit.reporting.results import (
    OUTCOMES,
    CheckResult,
    check_of,
    count_outcomes,
    module_of,
)
from conformance.kit.verdicts.failures import one_line

RULE_HELD = "held"
RULE_BROKEN = "broken"
RULE_UNTESTED = "could not test"
RULE_SKIPPED = "skipped"
#: A check marked xfail failed, as its mark expected: the rule did not hold there, though the
#: run's exit code (pytest's) lets it pass.
RULE_XFAILED = "xfailed"
#: Rule verdicts, worst first (the order the headline and the terminal use).
RULE_STATUSES = (RULE_BROKEN, RULE_UNTESTED, RULE_XFAILED, RULE_HELD, RULE_SKIPPED)
#: How counts read, in this order: outcome -> words.
COUNT_WORDS = (
    ("failed", "failed"),
    ("error", "could not test"),
    ("passed", "passed"),
    ("skipped", "skipped"),
    ("xfailed", "xfailed"),
    ("xpassed", "xpassed"),
)
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
    #: Checks per outcome (every outcome of `conformance.kit.reporting.results.OUTCOMES`, and ``total``).
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
    when any errored, else xfailed when any failed as an xfail mark expected (never held),
    else held when any passed, else skipped."""
    if counts.get("failed", 0):
        return RULE_BROKEN
    if counts.get("error", 0):
        return RULE_UNTESTED
    if counts.get("xfailed", 0):
        return RULE_XFAILED
    if any(counts.get(o, 0) for o in ("passed", "xpassed")):
        return RULE_HELD
    return RULE_SKIPPED


def nodes_of(results: Sequence[CheckResult]) -> tuple[str, ...]:
    """Every node the results' places name, in node order."""
    found = {node for r in results for node in r.place.nodes()}
    return tuple(sorted(found, key=natural_key))


def failure_focus(failed: Sequence[CheckResult]) -> tuple[tuple[str, ...], str]:
    """(nodes in every failed check, a sentence naming where the failures are)."""
    roles = [r.place.roles() for r in failed]
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


def rule_counts(rules: Sequence[RuleSummary]) -> str:
    """The rules by verdict, worst first: ``1 of 17 rules broken, 16 held``."""
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


# --- the run's verdict ---------------------------------------------------------------------------

#: Nodes a line names one by one before it counts the rest.
NODES_LISTED = 5


@dataclass(frozen=True)
class Coverage(JSONData):
    """Where a run looked: the nodes tested, every node left out (and why), the families, and
    the cross-node pairs when they were sampled (``sampled``: how, None when every pair was
    checked)."""

    nodes: tuple[str, ...] = ()
    left_out: Mapping[str, Exclusion] = field(default_factory=dict)
    families: FamilyPlan = field(default_factory=FamilyPlan)
    sampled: str | None = None


@dataclass(frozen=True)
class Verdict(JSONData):
    """The run's one line, and the facts it rests on: whether every rule held everywhere
    (``every_rule_held``) and, one entry each, what was not checked."""

    text: str
    every_rule_held: bool
    not_checked: tuple[str, ...] = ()


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NODES_LISTED])
    more = len(names) - NODES_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def not_checked(rules: Sequence[RuleSummary], coverage: Coverage) -> list[str]:
    """What the run did not check, one entry per kind: skipped rules and checks, xfailed rules,
    families and nodes left out (the user's narrowing and the suite's judgement apart), and
    sampled pairs."""
    found: list[str] = []
    for rule in rules:
        if rule.status == RULE_SKIPPED:
            why = f" ({one_line('; '.join(rule.skip_reasons), 160)})" if rule.skip_reasons else ""
            found.append(f"{rule.check} skipped{why}")
        elif rule.status == RULE_XFAILED:
            found.append(f"{rule.check} xfailed on {rule.counts.get('xfailed', 0)} checks")
        elif rule.counts.get("skipped", 0):
            why = f": {one_line('; '.join(rule.skip_reasons), 160)}" if rule.skip_reasons else ""
            found.append(f"{rule.check} skipped on {rule.counts['skipped']} checks{why}")
    for family in coverage.families.narrowed:
        found.append(
            f"{family_name(family)} not tested (the cluster declares it; --ip-family "
            f"{coverage.families.option})"
        )
    for source in coverage.families.unread:
        found.append(f"the IP families declared by {one_line(source, 160)}")
    by_kind: dict[tuple[bool, str], list[str]] = {}
    for name, exclusion in sorted(coverage.left_out.items(), key=lambda item: natural_key(item[0])):
        by_kind.setdefault((exclusion.narrowed, exclusion.kind), []).append(name)
    for (narrowed, kind), names in sorted(by_kind.items(), key=lambda item: item[0][0]):
        reason = coverage.left_out[names[0]].reason if len(names) == 1 else kind
        who = "narrowed away" if narrowed else "left out"
        noun = "node" if len(names) == 1 else f"{len(names)} nodes"
        found.append(f"{noun} {_some(names)} {who} ({reason})")
    if coverage.sampled:
        found.append(f"pairs sampled: {coverage.sampled}")
    return found


def verdict(rules: Sequence[RuleSummary], coverage: Coverage) -> Verdict:
    """The run's verdict. "every rule held" only when every rule held on every node the user
    asked for, in every family the cluster declares, with every pair; otherwise the rules by
    verdict and what was not checked."""
    gaps = not_checked(rules, coverage)
    held = bool(rules) and all(r.status == RULE_HELD for r in rules)
    if held and not gaps:
        families = " and ".join(family_name(f) for f in coverage.families.tested)
        nodes = len(coverage.nodes)
        text = (
            f"every rule held: {len(rules)} rules on every node ({nodes} "
            f"{'node' if nodes == 1 else 'nodes'}), in every family ({families}), "
            "with every pair"
        )
        return Verdict(text=text, every_rule_held=True)
    head = rule_counts(rules)
    if held:
        head += " where checked"
    text = f"{head}; not checked: {'; '.join(gaps)}" if gaps else head
    return Verdict(text=text, every_rule_held=False, not_checked=tuple(gaps))
