"""Node-by-node matrices of the reachability rules: for each check, IP family and protocol, a
source x destination grid of the tested nodes (same-node on the diagonal; a check whose sources
are nodes' host networks draws them as host rows), each cell passed, failed, flaky, lossy
(passed with some probes lost), could not test, skipped or not checked, with the one-line
cause of anything but a pass (the judge's observation, from the check's `RuleFailure`).

Pure: built from the run's `CheckResult`s (their `Place`s); ``summary.json``
carries them under ``matrices``, the HTML report draws them, and the terminal prints a text
grid per broken rule (`text_matrices`) for clusters of up to `TEXT_MATRIX_MAX_NODES` nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from conformance.kit.base.jsondata import JSONData
from conformance.kit.cluster.pairs import natural_key
from conformance.kit.reporting.results import CheckResult, check_of
from conformance.kit.verdicts.failures import one_line

CELL_PASSED = "passed"
CELL_FAILED = "failed"
CELL_FLAKY = "flaky"
CELL_LOSSY = "lossy"
CELL_UNTESTED = "could not test"
CELL_SKIPPED = "skipped"
CELL_NOT_CHECKED = "not checked"
CELL_STATUSES = (
    CELL_FAILED,
    CELL_UNTESTED,
    CELL_FLAKY,
    CELL_LOSSY,
    CELL_PASSED,
    CELL_SKIPPED,
    CELL_NOT_CHECKED,
)
#: One character per cell status in the terminal's text grids.
CELL_SYMBOLS = {
    CELL_PASSED: ".",
    CELL_FAILED: "X",
    CELL_FLAKY: "~",
    CELL_LOSSY: "%",
    CELL_UNTESTED: "!",
    CELL_SKIPPED: "s",
    CELL_NOT_CHECKED: " ",
}
#: A test outcome -> the cell it draws (a pass on retry is `CELL_FLAKY`, see `cell_status`).
_OUTCOME_CELLS = {
    "passed": CELL_PASSED,
    "xpassed": CELL_PASSED,
    "failed": CELL_FAILED,
    "xfailed": CELL_FAILED,
    "error": CELL_UNTESTED,
    "skipped": CELL_SKIPPED,
}
#: Grids of at most this many nodes are drawn whole, in node order; larger ones draw this
#: many rows and columns, those with failures first.
GRID_LIMIT = 30
#: The terminal prints text grids of broken rules for clusters up to this size.
TEXT_MATRIX_MAX_NODES = 10
#: The top-left corner of a text grid: what rows and columns are.
GRID_CORNER = "source \\ destination"
SOURCE_KIND_POD = "pod"
SOURCE_KIND_HOST = "host"
_FAMILY_ORDER = {"ipv4": 0, "ipv6": 1}
#: Grids of one check and family come in this protocol order (others after, as first seen).
PROTOCOL_ORDER = ("tcp", "udp", "icmp")
#: Cells that make a row or column "failing" for the ordering of large grids.
_TROUBLE = (CELL_FAILED, CELL_UNTESTED)


def cell_status(result: CheckResult, flaky: Mapping[str, str]) -> str:
    """The cell a result draws: its outcome, a pass on retry as flaky, a pass with lost probes
    as lossy."""
    status = _OUTCOME_CELLS.get(result.outcome, CELL_UNTESTED)
    if status == CELL_PASSED and result.nodeid in flaky:
        return CELL_FLAKY
    if status == CELL_PASSED and result.lossy:
        return CELL_LOSSY
    return status


def cell_cause(result: CheckResult, status: str, flaky: Mapping[str, str]) -> str | None:
    """The one-line cause of a cell that did not simply pass (None for a pass)."""
    if status == CELL_FLAKY:
        return one_line(flaky.get(result.nodeid, "passed only on a retry"))
    if status == CELL_LOSSY:
        return one_line(result.loss or f"{result.probes_lost} of {result.probes} probes lost")
    if status == CELL_SKIPPED:
        return one_line(result.reason or "skipped")
    if status in (CELL_FAILED, CELL_UNTESTED):
        return one_line((result.failure.observed if result.failure else "") or status)
    return None


@dataclass(frozen=True)
class Cell(JSONData):
    """One checked (source, destination) place of a matrix."""

    source: str
    destination: str
    status: str
    nodeid: str
    cause: str | None = None
    #: The lost share of the worst measured exchange of the check at this place (0..1; None:
    #: its loss was not measured).
    loss_ratio: float | None = None


@dataclass(frozen=True)
class Axes:
    """The rows (sources) and columns (destinations) a grid draws, and how many it leaves out."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    hidden_rows: int = 0
    hidden_columns: int = 0
    #: Rows and columns left out that still hold a failed or untested cell.
    hidden_trouble: int = 0


@dataclass(frozen=True)
class Matrix(JSONData):
    """One reachability check's grid for one IP family and protocol.

    ``nodes`` are both the rows (sources) and the columns (destinations), in the same order,
    so same-node cells lie on the diagonal. ``source_kind`` ``host``: the rows are the nodes'
    host networks. Only checked places have a cell; every other place is not checked.
    """

    check: str
    rule: str
    family: str
    protocol: str
    source_kind: str
    nodes: tuple[str, ...]
    cells: tuple[Cell, ...]

    @property
    def title(self) -> str:
        """``tcp over ipv4`` (what distinguishes the grids of one check)."""
        parts = [p for p in (self.protocol, self.family) if p]
        return " over ".join(parts) or self.check

    @functools.cached_property
    def _by_place(self) -> dict[tuple[str, str], Cell]:
        return {(c.source, c.destination): c for c in self.cells}

    def cell(self, source: str, destination: str) -> Cell | None:
        """The cell at (source, destination); None where nothing was checked."""
        return self._by_place.get((source, destination))

    def status(self, source: str, destination: str) -> str:
        found = self.cell(source, destination)
        return found.status if found is not None else CELL_NOT_CHECKED

    def counts(self) -> dict[str, int]:
        """Cells per status (checked cells only)."""
        counted = dict.fromkeys(CELL_STATUSES, 0)
        for c in self.cells:
            counted[c.status] = counted.get(c.status, 0) + 1
        counted.pop(CELL_NOT_CHECKED)
        return counted

    @property
    def broken(self) -> bool:
        return any(c.status == CELL_FAILED for c in self.cells)

    def row_label(self, node: str) -> str:
        """``node-1``, or ``node-1 (host)`` for a host-network source."""
        return f"{node} (host)" if self.source_kind == SOURCE_KIND_HOST else node

    def axes(self, limit: int = GRID_LIMIT) -> Axes:
        """Rows and columns to draw: all in node order up to ``limit`` nodes; beyond, the
        ``limit`` rows and columns with the most failed or untested cells first."""
        if len(self.nodes) <= limit:
            return Axes(rows=self.nodes, columns=self.nodes)
        trouble = [c for c in self.cells if c.status in _TROUBLE]
        row_trouble = {n: 0 for n in self.nodes}
        column_trouble = {n: 0 for n in self.nodes}
        for c in trouble:
            row_trouble[c.source] = row_trouble.get(c.source, 0) + 1
            column_trouble[c.destination] = column_trouble.get(c.destination, 0) + 1
        position = {n: i for i, n in enumerate(self.nodes)}

        def first(counts: dict[str, int]) -> list[str]:
            return sorted(self.nodes, key=lambda n: (-counts.get(n, 0), position[n]))

        rows, columns = first(row_trouble)[:limit], first(column_trouble)[:limit]
        shown = set(rows), set(columns)
        hidden = {c.source for c in trouble if c.source not in shown[0]} | {
            c.destination for c in trouble if c.destination not in shown[1]
        }
        return Axes(
            rows=tuple(rows),
            columns=tuple(columns),
            hidden_rows=len(self.nodes) - len(rows),
            hidden_columns=len(self.nodes) - len(columns),
            hidden_trouble=len(hidden),
        )


def build_matrices(
    results: Iterable[CheckResult],
    flaky: Mapping[str, str] | None = None,
    nodes: Sequence[str] = (),
) -> list[Matrix]:
    """Every matrix of the run: one per (check, family, protocol) among the results that name a
    source and a destination node. ``nodes`` (the tested nodes) order the axes; nodes seen
    only in results are added in node order. Matrices come in check order (as the checks first
    reported), then IPv4 before IPv6, then tcp, udp, icmp (other protocols as first seen)."""
    flaky = flaky or {}
    grouped: dict[tuple[str, str, str, str], list[CheckResult]] = {}
    rules: dict[str, str] = {}
    for result in results:
        if not result.place.is_pair:
            continue
        check = check_of(result)
        rules.setdefault(check, result.rule)
        key = (
            check,
            result.place.family or "",
            result.place.protocol or "",
            result.place.source_kind or SOURCE_KIND_POD,
        )
        grouped.setdefault(key, []).append(result)
    check_order = {check: i for i, check in enumerate(rules)}
    protocol_order = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    for _, _, protocol, _ in grouped:
        protocol_order.setdefault(protocol, len(protocol_order))
    matrices = []
    for (check, family, protocol, kind), members in sorted(
        grouped.items(),
        key=lambda item: (
            check_order[item[0][0]],
            _FAMILY_ORDER.get(item[0][1], 9),
            item[0][1],
            protocol_order[item[0][2]],
        ),
    ):
        seen = {n for r in members for n in (r.place.source, r.place.destination) if n}
        axis = tuple(dict.fromkeys(nodes)) + tuple(sorted(seen - set(nodes), key=natural_key))
        cells = []
        for r in members:
            status = cell_status(r, flaky)
            cells.append(
                Cell(
                    source=r.place.source or "",
                    destination=r.place.destination or "",
                    status=status,
                    nodeid=r.nodeid,
                    cause=cell_cause(r, status, flaky),
                    loss_ratio=r.loss_ratio,
                )
            )
        matrices.append(
            Matrix(
                check=check,
                rule=rules[check],
                family=family,
                protocol=protocol,
                source_kind=kind,
                nodes=axis,
                cells=tuple(cells),
            )
        )
    return matrices


# --- the terminal ------------------------------------------------------------------------------


def _grid_key(matrix: Matrix) -> tuple[object, ...]:
    return (
        matrix.source_kind,
        matrix.nodes,
        tuple(matrix.status(s, d) for s in matrix.nodes for d in matrix.nodes),
    )


def merged_title(matrices: Sequence[Matrix]) -> str:
    """The title of grids drawn once for several protocols or families: ``tcp, udp, icmp over
    ipv4`` (``; tcp over ipv6`` for another family)."""
    by_family: dict[str, list[str]] = {}
    for matrix in matrices:
        by_family.setdefault(matrix.family, []).append(matrix.protocol)
    parts = [
        " over ".join(p for p in (", ".join(x for x in protocols if x), family) if p)
        for family, protocols in by_family.items()
    ]
    return "; ".join(p for p in parts if p) or (matrices[0].check if matrices else "")


def merge_identical(matrices: Sequence[Matrix]) -> list[list[Matrix]]:
    """``matrices`` grouped where a check's grids are identical cell for cell (same statuses;
    the causes may differ), in first-seen order."""
    groups: dict[tuple[str, tuple[object, ...]], list[Matrix]] = {}
    for matrix in matrices:
        groups.setdefault((matrix.check, _grid_key(matrix)), []).append(matrix)
    return list(groups.values())


def text_grid(matrix: Matrix, heading: str = "") -> list[str]:
    """A grid as text: a heading (the check and ``heading``, default the matrix's title), then
    one row per source with one symbol per destination (columns numbered as the rows are)."""
    heading = heading or matrix.title
    checked = len(matrix.cells)
    failed = matrix.counts()[CELL_FAILED]
    lines = [f"{matrix.check} ({heading}): {failed} of {checked} checked cells failed"]
    labels = [f"{i} {matrix.row_label(n)}" for i, n in enumerate(matrix.nodes, start=1)]
    width = max([len(GRID_CORNER), *map(len, labels)])
    numbers = " ".join(f"{i:>2}" for i in range(1, len(matrix.nodes) + 1))
    lines.append(f"  {GRID_CORNER:<{width}}  {numbers}")
    for label, source in zip(labels, matrix.nodes, strict=True):
        symbols = " ".join(f"{CELL_SYMBOLS[matrix.status(source, d)]:>2}" for d in matrix.nodes)
        lines.append(f"  {label:<{width}}  {symbols}")
    return lines


def text_matrices(matrices: Sequence[Matrix], max_nodes: int = TEXT_MATRIX_MAX_NODES) -> list[str]:
    """Text grids of the broken matrices among ``matrices`` (clusters of at most ``max_nodes``
    nodes; none beyond), grids identical for several protocols or families printed once, and a
    legend at the end. Empty when nothing is broken or the grids are too large."""
    broken = [m for m in matrices if m.broken and len(m.nodes) <= max_nodes]
    if not broken:
        return []
    lines: list[str] = []
    for members in merge_identical(broken):
        lines.extend(text_grid(members[0], merged_title(members)))
    lines.append(
        "  legend: "
        + "  ".join(
            f"{CELL_SYMBOLS[s] if s != CELL_NOT_CHECKED else '(blank)'} {s}" for s in CELL_STATUSES
        )
    )
    return lines
