"""The truth-table judge: expected against observed connectivity of every cell of a scenario's
step, the differing cells first; the same data feeds the structured failure (`table_failure`,
a `RuleFailure`), the JUnit property and ``summary.json`` (a verdict is data, never text parsed
back). Pure.

A cell is observed as one of:

- ``open``: the client got the destination agent's answer;
- ``blocked``: no answer, and the destination's listener never recorded the cell's nonce (the
  traffic never reached the pod);
- ``reached``: no answer, yet the destination recorded the nonce: the traffic reached the pod
  and its answer was lost on the way back.

A cell expected allowed must be ``open``; one expected denied must be ``blocked``: denied
traffic that reached the pod (``reached``) breaks the policy even though the client gave up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conformance.kit.base.jsondata import JSONData
from conformance.kit.netpol.model import Cell, Model, Probe
from conformance.kit.verdicts.failures import RuleFailure

OPEN = "open"
BLOCKED = "blocked"
REACHED = "reached"
#: Grid symbols: open, blocked, reached; a wrong cell gets `WRONG_MARK` after its symbol.
SYMBOLS = {OPEN: "O", BLOCKED: ".", REACHED: "R"}
WRONG_MARK = "!"
#: Wrong cells listed one per line in a failure text before "and N more".
CELLS_LISTED = 40


@dataclass(frozen=True)
class CellResult(JSONData):
    """One cell's verdict: allowed or not by the policies, what was observed, and the client's
    own words when it got no answer."""

    source: str
    destination: str
    source_node: str
    destination_node: str
    proto: str
    port: int
    family: int
    expected_allowed: bool
    observed: str
    error: str = ""

    @property
    def wrong(self) -> bool:
        return self.observed != (OPEN if self.expected_allowed else BLOCKED)

    @property
    def probe(self) -> Probe:
        return Probe(self.proto, self.port, self.family)

    def line(self) -> str:
        """``x/a (node-1) -> y/b (node-2) tcp/8080 IPv4: expected denied, observed open``."""
        want = "allowed" if self.expected_allowed else "denied"
        said = f" ({self.error})" if self.error and self.observed != OPEN else ""
        return (
            f"{self.source} ({self.source_node}) -> {self.destination} ({self.destination_node}) "
            f"{self.probe.text}: expected {want}, observed {self.observed}{said}"
        )


@dataclass(frozen=True)
class TableResult(JSONData):
    """One step of a scenario, judged: its cells (wrong ones first), how long the step took to
    settle (``seconds``: from the API's answer until the end of the first sweep that saw the
    expected table, or the whole bound when none did) and the bound."""

    scenario: str
    step: str
    cells: tuple[CellResult, ...]
    seconds: float
    bound: float
    settled: bool

    @property
    def wrong(self) -> tuple[CellResult, ...]:
        return tuple(c for c in self.cells if c.wrong)

    def counts(self) -> dict[str, int]:
        return {
            "cells": len(self.cells),
            "wrong": len(self.wrong),
            "allowed": sum(1 for c in self.cells if c.expected_allowed),
            "denied": sum(1 for c in self.cells if not c.expected_allowed),
        }


def judge_table(
    scenario: str,
    step: str,
    model: Model,
    expected: Mapping[Cell, bool],
    observed: Mapping[Cell, tuple[str, str]],
    *,
    seconds: float,
    bound: float,
) -> TableResult:
    """``observed``: cell -> (state, the client's error); the wrong cells first, in the model's
    order."""
    results = []
    for cell, allowed in expected.items():
        state, error = observed[cell]
        results.append(
            CellResult(
                source=cell.source,
                destination=cell.destination,
                source_node=model.pod(cell.source).node,
                destination_node=model.pod(cell.destination).node,
                proto=cell.probe.proto,
                port=cell.probe.port,
                family=cell.probe.family,
                expected_allowed=allowed,
                observed=state,
                error=error,
            )
        )
    ordered = [c for c in results if c.wrong] + [c for c in results if not c.wrong]
    settled = not any(c.wrong for c in results)
    return TableResult(scenario, step, tuple(ordered), seconds, bound, settled)


def grid(cells: Sequence[CellResult], probe: Probe) -> list[str]:
    """The table of one probe as rows of sources and columns of destinations: ``O`` open,
    ``.`` blocked, ``R`` reached (no answer), ``!`` after a wrong cell, ``-`` a pod to
    itself."""
    mine = [c for c in cells if c.probe == probe]
    pods = list(dict.fromkeys([c.source for c in mine] + [c.destination for c in mine]))
    pods.sort()
    by_pair = {(c.source, c.destination): c for c in mine}
    width = max((len(p) for p in pods), default=3) + 1
    lines = [" " * width + "".join(f"{p:>{width}}" for p in pods)]
    for source in pods:
        row = []
        for destination in pods:
            found = by_pair.get((source, destination))
            if found is None:
                row.append(f"{'-':>{width}}")
                continue
            mark = SYMBOLS[found.observed] + (WRONG_MARK if found.wrong else "")
            row.append(f"{mark:>{width}}")
        lines.append(f"{source:<{width}}" + "".join(row))
    return lines


def expected_grid(cells: Sequence[CellResult], probe: Probe) -> list[str]:
    """The expected table of one probe, as `grid` draws it (``O`` allowed, ``.`` denied)."""
    flipped = [
        CellResult(
            c.source,
            c.destination,
            c.source_node,
            c.destination_node,
            c.proto,
            c.port,
            c.family,
            c.expected_allowed,
            OPEN if c.expected_allowed else BLOCKED,
        )
        for c in cells
    ]
    return grid(flipped, probe)


def table_failure(rule: str, policies: Sequence[str], tables: Sequence[TableResult]) -> RuleFailure:
    """A scenario's broken rule as data: expected (every cell as the policies say), observed
    (how many cells were wrong, which way), the nodes of the wrong cells, and as details the
    policies applied, then per wrong step its wrong cells (expected against observed, nodes
    named) and the grids of the probes they concern, observed beside expected."""
    wrong = [cell for table in tables for cell in table.wrong]
    cells = sum(table.counts()["cells"] for table in tables)
    opened = sum(1 for cell in wrong if not cell.expected_allowed)
    steps = ", ".join(repr(table.step) for table in tables if table.wrong)
    return RuleFailure(
        rule=rule,
        expected="every cell allowed or denied as the policies say, denied traffic never "
        "delivered, each change in force within its bound",
        observed=f"{len(wrong)} of {cells} cells wrong (step {steps}): {opened} denied but "
        f"open or reached, {len(wrong) - opened} allowed but closed",
        nodes=tuple(sorted({n for c in wrong for n in (c.source_node, c.destination_node)})),
        details=(f"policies: {'; '.join(policies) or 'none'}", *_wrong_steps(tables)),
    )


def failure_text(rule: str, policies: Sequence[str], tables: Sequence[TableResult]) -> str:
    """The failure message of a scenario, as the terminal and JUnit show it."""
    return table_failure(rule, policies, tables).text()


def _wrong_steps(tables: Sequence[TableResult]) -> list[str]:
    lines: list[str] = []
    for table in tables:
        wrong = table.wrong
        if not wrong:
            continue
        counts = table.counts()
        lines.append(
            f"step {table.step!r}: {counts['wrong']} of {counts['cells']} cells wrong "
            f"(as seen {table.seconds:.1f} s after the change; bound {table.bound:.0f} s):"
        )
        lines += [f"  {cell.line()}" for cell in wrong[:CELLS_LISTED]]
        if len(wrong) > CELLS_LISTED:
            lines.append(f"  ... and {len(wrong) - CELLS_LISTED} more")
        for probe in dict.fromkeys(c.probe for c in wrong):
            lines.append(f"  {probe.text} observed (O open, . blocked, R reached; ! wrong):")
            observed = grid(table.cells, probe)
            expected = expected_grid(table.cells, probe)
            lines.append(f"    {observed[0]}    expected:")
            for seen, want in zip(observed[1:], expected[1:], strict=True):
                lines.append(f"    {seen}    {want}")
    return lines


def table_property(tables: Sequence[TableResult]) -> list[dict[str, object]]:
    """The JUnit property's value (and ``summary.json``'s): per step its counts, timing and
    the wrong cells (every cell is in the HTML report's table)."""
    return [
        {
            "scenario": t.scenario,
            "step": t.step,
            "seconds": round(t.seconds, 3),
            "bound": t.bound,
            "settled": t.settled,
            **t.counts(),
            "cells_detail": [c.to_dict() for c in t.cells],
        }
        for t in tables
    ]
