"""A verdict as data: the structured failure the judge produces (`RuleFailure`), the exception
that carries it to pytest (`RuleBroken`, raised by `fail_rule`), the report attribute it
travels on (`FAILURE_ATTRIBUTE`, also between xdist workers), how a "could not test" is worded
(`could_not_test_text`), and the names of the JUnit properties (``netconform.*``) that place an
item and record its tries and losses. Every output (terminal, JUnit, ``summary.json``, the
matrices, the HTML) is drawn from the `RuleFailure`; nothing reads failure text back. Pure but
for pytest's public failure exception (``pytest.fail.Exception``), which `RuleBroken` is."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:  # the class behind pytest's public alias, for the type checker only
    from _pytest.outcomes import Failed as PytestFailure
else:
    PytestFailure = pytest.fail.Exception

from conformance.kit.base.jsondata import JSONData

#: JUnit property of a check that passed only on a retry; its value says how.
FLAKY_PROPERTY = "netconform.flaky"
#: Prefix of the JUnit properties a check item carries (its place, its tries).
PLACE_PREFIX = "netconform."
#: The place's fields, in the order its JUnit properties come.
PLACE_KEYS = ("check", "family", "protocol", "node", "source", "destination", "source_kind")
#: JUnit properties of a reachability check: network attempts made, and attempts lost.
ATTEMPTS_PROPERTY = PLACE_PREFIX + "attempts"
LOSSES_PROPERTY = PLACE_PREFIX + "losses"
#: JUnit properties of a check whose loss was measured: probes sent and lost (over its
#: exchanges), the worst exchange's lost share (0..1), and what each exchange lost.
PROBES_PROPERTY = PLACE_PREFIX + "probes"
PROBES_LOST_PROPERTY = PLACE_PREFIX + "probes_lost"
LOSS_RATIO_PROPERTY = PLACE_PREFIX + "loss_ratio"
LOSS_PROPERTY = PLACE_PREFIX + "loss"
#: The attribute of a ``TestReport`` that carries its `RuleFailure` (as `RuleFailure.to_dict`,
#: plain JSON, so it travels with the report from an xdist worker to the controller).
FAILURE_ATTRIBUTE = "netconform_failure"


@dataclass(frozen=True)
class Place(JSONData):
    """Where one test item looks, known at collection from its parameters: its ``check``, the
    IP ``family`` (``ipv4``), ``protocol``, the ``source`` and ``destination`` nodes of a pair
    (equal for same-node), the ``node`` of a per-node check, and ``source_kind`` (``pod``, or
    ``host``: the source node's host network). Unset fields are None. It travels as the item's
    ``netconform.*`` JUnit properties (`properties`), read back key by key (`from_dict`)."""

    check: str = ""
    family: str | None = None
    protocol: str | None = None
    node: str | None = None
    source: str | None = None
    destination: str | None = None
    source_kind: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The fields that are set (``summary.json``'s ``place``)."""
        return {key: value for key in PLACE_KEYS if (value := getattr(self, key))}

    def properties(self) -> list[tuple[str, str]]:
        """The item's JUnit properties: ``netconform.<field>`` for each field that is set."""
        return [(PLACE_PREFIX + key, value) for key, value in self.to_dict().items()]

    @property
    def is_pair(self) -> bool:
        """Whether the item checks a (source, destination) pair of nodes."""
        return bool(self.source and self.destination)

    def nodes(self) -> tuple[str, ...]:
        """The nodes it names (source, destination, node), each once."""
        return tuple(dict.fromkeys(n for n in (self.source, self.destination, self.node) if n))

    def roles(self) -> dict[str, str]:
        """node -> its role here: source, destination, same node, or node."""
        if self.source and self.destination:
            if self.source == self.destination:
                return {self.source: "same node"}
            return {self.source: "source", self.destination: "destination"}
        return {self.node: "node"} if self.node else {}


def rule_from_docstring(doc: str | None) -> str:
    """The rule a check states: the first paragraph of its docstring, on one line."""
    if not doc:
        return ""
    first_paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(first_paragraph.split())


def pod_label(namespace: str, name: str, node: str | None = None) -> str:
    """``namespace/name (node N)``: how failure text names a pod."""
    where = f" (node {node})" if node else ""
    return f"{namespace}/{name}{where}"


@dataclass(frozen=True)
class RuleFailure(JSONData):
    """What a check found wrong, as the judge found it: the rule, expected versus observed,
    where (protocol, pods, nodes) and details (probe output, events). ``expected`` is None
    when the check has no verdict on the rule: it could not test, or it stopped on an error
    that is no judgement (then ``observed`` is the error's first line).

    The item's other facts (its check, place, tries and losses) are the item's, recorded on
    it once (`conformance.kit.reporting.results.CheckResult`), not repeated here."""

    rule: str
    observed: str
    expected: str | None = None
    protocol: str | None = None
    pods: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    details: tuple[str, ...] = ()

    def text(self) -> str:
        """The message of a broken rule, as pytest prints it and JUnit keeps it.

        First line: the rule. Then where (protocol, pods, nodes), expected versus observed, and
        any details (probe output, events), one per line.
        """
        lines = [f"RULE BROKEN: {self.rule}"]
        if self.protocol:
            lines.append(f"  protocol: {self.protocol}")
        if self.pods:
            lines.append(f"  pods:     {' -> '.join(self.pods)}")
        if self.nodes:
            lines.append(f"  nodes:    {', '.join(self.nodes)}")
        lines.append(f"  expected: {self.expected}")
        lines.append(f"  observed: {self.observed}")
        lines.extend(f"  {detail}" for detail in self.details)
        return "\n".join(lines)


class RuleBroken(PytestFailure):
    """A broken rule: pytest's failure (``pytest.fail(..., pytrace=False)``, its message the
    failure's `RuleFailure.text`), carrying the `RuleFailure` for the plugin to attach to the
    report."""

    # pytest names the exception where it shows the message (JUnit's failure message, the
    # terminal's short summary: ``Failed: RULE BROKEN: ...``); a broken rule keeps reading as
    # pytest's own failure, as pytest's outcome exceptions name themselves.
    __module__ = PytestFailure.__module__
    __qualname__ = PytestFailure.__qualname__

    def __init__(self, failure: RuleFailure) -> None:
        super().__init__(failure.text(), pytrace=False)
        self.failure = failure


def fail_rule(
    rule: str,
    *,
    expected: str,
    observed: str,
    protocol: str | None = None,
    pods: Sequence[str] = (),
    nodes: Sequence[str] = (),
    details: Sequence[str] = (),
) -> NoReturn:
    """Fail the running check: ``rule`` is broken, ``expected`` versus ``observed``, where
    (``protocol``, ``pods``, ``nodes``) and ``details``, one per line of the message."""
    raise RuleBroken(
        RuleFailure(
            rule=rule,
            expected=expected,
            observed=observed,
            protocol=protocol,
            pods=tuple(pods),
            nodes=tuple(nodes),
            details=tuple(details),
        )
    )


def failure_of(report: object) -> RuleFailure | None:
    """The `RuleFailure` a test report carries (`FAILURE_ATTRIBUTE`; None without one)."""
    raw = getattr(report, FAILURE_ATTRIBUTE, None)
    return RuleFailure.from_dict(raw) if isinstance(raw, Mapping) else None


#: The one place the words are written: every "could not test" text starts with them.
COULD_NOT_TEST_PREFIX = "COULD NOT TEST: "
#: Property of a report the plugin turned into "could not test": the error's type.
UNTESTED_PROPERTY = PLACE_PREFIX + "could_not_test"
#: Property of a check whose failure on a node accounts for that node's exclusion (the node
#: exclusion kinds it judges, comma-separated; a check module's ``ACCOUNTS_FOR``).
ACCOUNTS_FOR_PROPERTY = PLACE_PREFIX + "accounts_for"


def could_not_test_text(cause: str) -> str:
    """How every report shows a check that could not test (the plugin derives it from the
    error's type, a `conformance.kit.base.errors.CouldNotTest` or an API refusal; no check writes
    it): `COULD_NOT_TEST_PREFIX` and the cause."""
    return f"{COULD_NOT_TEST_PREFIX}{cause}"


#: A cause shown on one line (a matrix cell's hover text, a terminal line) is cut here.
CAUSE_LIMIT = 300


def first_line(text: str) -> str:
    """The first non-blank line of an error's text, stripped: what a report shows of an error
    that carries no `RuleFailure` (a fixture's exception, a crashed worker)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def one_line(text: str, limit: int = CAUSE_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"
