"""Failure text and the item properties a verdict carries: how a broken rule and a "could not
test" are written (`format_rule_failure`, `could_not_test_text`), read back
(`read_failure`), and the names of the JUnit properties (``netconform.*``) that place an item
and record its tries and losses. Pure."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

#: JUnit property of a check that passed only on a retry; its value says how.
FLAKY_PROPERTY = "netconform.flaky"
#: Prefix of the JUnit properties a check item carries (its place, its tries).
PLACE_PREFIX = "netconform."
PLACE_KEYS = ("check", "family", "protocol", "source", "destination", "node", "source_kind")
#: JUnit properties of a reachability check: network attempts made, and attempts lost.
ATTEMPTS_PROPERTY = PLACE_PREFIX + "attempts"
LOSSES_PROPERTY = PLACE_PREFIX + "losses"
#: JUnit properties of a check whose loss was measured: probes sent and lost (over its
#: exchanges), the worst exchange's lost share (0..1), and what each exchange lost.
PROBES_PROPERTY = PLACE_PREFIX + "probes"
PROBES_LOST_PROPERTY = PLACE_PREFIX + "probes_lost"
LOSS_RATIO_PROPERTY = PLACE_PREFIX + "loss_ratio"
LOSS_PROPERTY = PLACE_PREFIX + "loss"


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


#: Lines of `format_rule_failure` text a report reads back (expected versus observed).
_EXPECTED = "  expected: "
_OBSERVED = "  observed: "
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


@dataclass(frozen=True)
class FailureText:
    """What a failure message says, read back: expected and observed when the message is a
    `format_rule_failure` text, else its first line as the observation."""

    expected: str | None
    observed: str


def read_failure(message: str | None) -> FailureText:
    """Expected versus observed from a check's failure message (see `format_rule_failure`);
    a setup error (could not test) or any other text is observed as its first line."""
    lines = (message or "").splitlines()
    expected = next((line[len(_EXPECTED) :] for line in lines if line.startswith(_EXPECTED)), None)
    observed = next((line[len(_OBSERVED) :] for line in lines if line.startswith(_OBSERVED)), None)
    if observed is None:
        first = next((line.strip() for line in lines if line.strip()), "")
        observed = first.removeprefix("[setup] ").removeprefix("[teardown] ")
    return FailureText(expected=expected, observed=observed)


def one_line(text: str, limit: int = CAUSE_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"
