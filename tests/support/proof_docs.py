"""What was proven where, as documents the tests write: the genuine-cluster tier's page (each
case, its exit code and timings, every rule's verdict, each fault and the checks that caught
it) and the page joining it with the detection matrix on netlab (each check family and each
fault, with the cluster it was proven on).

The tier records its cases in a `Proof` while it runs; ``NETCONFORM_REALK8S_DOC=docs/realk8s.md``
has it write both pages (the joined one, ``proven-on.md``, beside it) from that record and from
the detection matrix's own document (``detection-matrix.md`` in the same folder).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

DOC_VARIABLE = "NETCONFORM_REALK8S_DOC"
JOINED_NAME = "proven-on.md"
MATRIX_NAME = "detection-matrix.md"
REGENERATE = f"{DOC_VARIABLE}=docs/realk8s.md .venv/bin/pytest tests/realk8s"
MATRIX_REGENERATE = "NETCONFORM_MATRIX_DOC=docs/detection-matrix.md .venv/bin/pytest tests/e2e/test_detection_matrix.py"
GENUINE = "Kubernetes v1.28.4, 3 nodes, `../shared/realk8s`"


@dataclass(frozen=True)
class RuleVerdict:
    """One check (rule) of a run: its module, status (held, broken, skipped, could not test)
    and, when skipped, why."""

    check: str
    module: str
    status: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultRecord:
    """A fault made on the genuine cluster and the checks it made fail."""

    name: str
    node: int
    summary: str
    twin: str | None
    caught: tuple[str, ...]
    pending: str | None = None


@dataclass
class CaseRecord:
    """One case of the tier: a whole run of the suite (or three at once)."""

    name: str
    kubeconfig: str
    options: tuple[str, ...]
    exit_code: int
    seconds: float
    checks_ran: int
    deploy_seconds: float | None = None
    kubelet_age: float | None = None
    rules: tuple[RuleVerdict, ...] = ()
    faults: tuple[FaultRecord, ...] = ()
    #: Set when the case's verdict cannot be judged on main yet (an expected failure).
    pending: str | None = None
    passed: bool = True


@dataclass
class Proof:
    """Everything the tier proved in one session."""

    cases: list[CaseRecord] = field(default_factory=list)
    install_seconds: float | None = None
    up_seconds: float | None = None
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def add(self, case: CaseRecord) -> None:
        self.cases.append(case)


def rule_verdicts(summary: Mapping[str, object]) -> tuple[RuleVerdict, ...]:
    """Each rule of a run's ``summary.json`` (its ``rules`` table)."""
    rules = summary.get("rules")
    if not isinstance(rules, list):
        return ()
    return tuple(
        RuleVerdict(
            check=str(rule["check"]),
            module=str(rule.get("module", "")),
            status=str(rule.get("status", "")),
            reasons=tuple(str(r) for r in rule.get("skip_reasons") or ()),
        )
        for rule in rules
        if isinstance(rule, dict)
    )


# --- the detection matrix's document ----------------------------------------------------------

_SECTION = re.compile(r"^### (?P<label>.+)$")
_CHECK = re.compile(r"^- `(?P<check>[^`]+)`$")
_FAULT_NAME = re.compile(r"`([^`]+)`")


def matrix_catches(document: str) -> dict[str, list[str]]:
    """The detection matrix's "Which checks caught which fault": lab label -> the check IDs
    that failed on it (empty for a lab where none failed)."""
    catches: dict[str, list[str]] = {}
    label: str | None = None
    for line in document.splitlines():
        section = _SECTION.match(line)
        if section:
            label = section.group("label").strip()
            catches[label] = []
            continue
        check = _CHECK.match(line)
        if label is not None and check:
            catches[label].append(check.group("check"))
    return catches


def lab_faults(label: str) -> tuple[str, ...]:
    """The lab faults a matrix label names (``` `a` + `b`, dual ``` -> a, b); none: healthy."""
    return tuple(_FAULT_NAME.findall(label.split(" (suite:")[0]))


def check_of(test_id: str) -> str:
    """``test_no_snat::test_no_snat[udp-node-1->node-2]`` -> ``test_no_snat``."""
    return test_id.split("::", 1)[-1].split("[", 1)[0]


# --- the pages -------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _status(rule: RuleVerdict) -> str:
    """``held``, ``broken``..., or ``skipped: REASON`` (the reason's own words, without the API
    answer it may quote in brackets)."""
    if rule.status == "skipped" and rule.reasons:
        reason = rule.reasons[0].split(" (HTTP ", 1)[0]
        return f"skipped: {reason[:160]}"
    return rule.status


def render_tier(proof: Proof, when: datetime.datetime | None = None) -> str:
    """The genuine-cluster tier's page."""
    when = when or proof.started
    lines = [
        "# The suite on a genuine Kubernetes",
        "",
        "Generated by `tests/realk8s` from a real run; do not edit by hand. One genuine cluster",
        f"({GENUINE}: upstream kube-apiserver, kubelet, kube-proxy, containerd and the CNI",
        "reference plugins, each node a network namespace `rk-node-N`) is brought up fresh for",
        "the session, the suite runs against it as a user runs it, and everything is taken down.",
        "Faults run two at a time, on rules that do not meet: each must fail exactly its own",
        "checks (the patterns of its netlab twin), and nothing else may fail.",
        "",
        f"- run: {when:%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs),"
        f" load {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        f"- install.sh: {_seconds(proof.install_seconds)} s, up.sh: {_seconds(proof.up_seconds)} s",
        f"- regenerate: `{REGENERATE}`",
        "",
        "## Cases",
        "",
        "| case | kubeconfig | options | exit | checks ran | suite s | deploy s | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in proof.cases:
        verdict = "proven" if case.passed else "FAILED"
        if case.pending:
            verdict = "pending (expected failure)"
        options = " ".join(case.options) or "-"
        lines.append(
            f"| {case.name} | {case.kubeconfig} | `{options}` | {case.exit_code} |"
            f" {case.checks_ran} | {case.seconds:.0f} | {_seconds(case.deploy_seconds)} |"
            f" {verdict} |"
        )
    healthy = next((c for c in proof.cases if c.rules and not c.faults), None)
    if healthy is not None:
        lines += ["", f"## Rules on the healthy cluster ({healthy.name})", ""]
        lines += ["| check | module | verdict |", "| --- | --- | --- |"]
        lines += [
            f"| `{rule.check}` | `{rule.module}` | {_status(rule)} |" for rule in healthy.rules
        ]
    faults = [(case, fault) for case in proof.cases for fault in case.faults]
    if faults:
        lines += ["", "## Faults made by hand and the checks that caught them", ""]
        lines += ["| fault | node | how | netlab twin | checks failed | verdict |"]
        lines += ["| --- | ---: | --- | --- | ---: | --- |"]
        for _case, fault in faults:
            verdict = "pending: " + fault.pending if fault.pending else "exactly its checks"
            twin = f"`{fault.twin}`" if fault.twin else "-"
            lines.append(
                f"| `{fault.name}` | {fault.node} | {fault.summary} | {twin} |"
                f" {len(fault.caught)} | {verdict} |"
            )
        for _case, fault in faults:
            lines += ["", f"### `{fault.name}`", ""]
            lines += [f"- `{test_id}`" for test_id in fault.caught] or ["- none failed"]
    return "\n".join(lines) + "\n"


def render_joined(proof: Proof, matrix_document: str | None) -> str:
    """Each check family and each fault with the cluster it was proven on."""
    catches = matrix_catches(matrix_document) if matrix_document else {}
    lab_caught: dict[str, set[str]] = {}
    for label, checks in catches.items():
        faults = lab_faults(label)
        if len(faults) != 1:
            continue  # two faults at once: which of them a failure is due to is not said
        for test_id in checks:
            lab_caught.setdefault(check_of(test_id), set()).add(faults[0])
    genuine_caught: dict[str, set[str]] = {}
    for case in proof.cases:
        for fault in case.faults:
            if fault.pending:
                continue
            for test_id in fault.caught:
                genuine_caught.setdefault(check_of(test_id), set()).add(fault.name)
    healthy = next((c for c in proof.cases if c.rules and not c.faults), None)
    lab_healthy = [label for label in catches if not lab_faults(label) and not catches[label]]
    lines = [
        "# What was proven where",
        "",
        "Generated by `tests/realk8s` from its own run and the detection matrix's document"
        f" (`{MATRIX_NAME}`); do not edit by hand.",
        "A check is proven on a cluster when it held on the healthy cluster and a fault made by"
        " hand on that cluster made it fail. netlab: the detection matrix"
        f" (`{MATRIX_REGENERATE}`); genuine: the genuine-cluster tier (`{REGENERATE}`).",
        "",
        f"- netlab healthy labs with no failure: {'; '.join(lab_healthy) or 'none recorded'}",
        f"- genuine cluster: {GENUINE}, {proof.started:%Y-%m-%d}",
        "- pending: a fault whose checks main does not judge yet (an expected failure of the"
        " tier) proves nothing: listed under Faults, never counted for a check family",
        "",
        "## Check families",
        "",
        "| module | check | netlab: faults that made it fail (one fault per lab) |"
        " genuine 1.28: healthy |"
        " genuine 1.28: faults that made it fail |",
        "| --- | --- | --- | --- | --- |",
    ]
    rules: Sequence[RuleVerdict] = healthy.rules if healthy is not None else ()
    for rule in sorted(rules, key=lambda r: (r.module, r.check)):
        lab = ", ".join(f"`{f}`" for f in sorted(lab_caught.get(rule.check, ()))) or "-"
        real = ", ".join(f"`{f}`" for f in sorted(genuine_caught.get(rule.check, ()))) or "-"
        lines.append(
            f"| `{rule.module.rsplit('/', 1)[-1]}` | `{rule.check}` | {lab} | {_status(rule)} |"
            f" {real} |"
        )
    lines += ["", "## Faults", ""]
    lines += ["| fault | cluster | made by | checks failed | proven |"]
    lines += ["| --- | --- | --- | ---: | --- |"]
    for label, checks in catches.items():
        if lab_faults(label):
            lines.append(
                f"| {label} | netlab | the lab (`netlab up --fault`) | {len(checks)} | yes |"
            )
    for case in proof.cases:
        for fault in case.faults:
            proven = f"pending: {fault.pending}" if fault.pending else "yes"
            twin = f" (netlab twin: `{fault.twin}`)" if fault.twin else ""
            lines.append(
                f"| `{fault.name}`{twin} | genuine 1.28 | {fault.summary} | {len(fault.caught)} |"
                f" {proven} |"
            )
    return "\n".join(lines) + "\n"


def save(proof: Proof, path: Path) -> Path:
    """``proof`` as JSON (what the pages are rendered from, to render them again)."""
    data = asdict(proof)
    data["started"] = proof.started.isoformat()
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load(path: Path) -> Proof:
    """A `Proof` saved by `save`."""
    data = json.loads(path.read_text())
    cases = []
    for case in data.pop("cases"):
        case["rules"] = tuple(RuleVerdict(**rule) for rule in case["rules"])
        case["faults"] = tuple(
            FaultRecord(**{**fault, "caught": tuple(fault["caught"])}) for fault in case["faults"]
        )
        case["options"] = tuple(case["options"])
        cases.append(CaseRecord(**case))
    started = datetime.datetime.fromisoformat(data.pop("started"))
    return Proof(cases=cases, started=started, **data)


def write_docs(proof: Proof, page: Path) -> tuple[Path, Path]:
    """The tier's page at ``page``, the joined page beside it, and the record both are
    rendered from (``page`` with ``.json``)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    save(proof, page.with_suffix(".json"))
    page.write_text(render_tier(proof))
    matrix = page.parent / MATRIX_NAME
    joined = page.parent / JOINED_NAME
    joined.write_text(render_joined(proof, matrix.read_text() if matrix.exists() else None))
    return page, joined


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/support/proof_docs.py docs/realk8s.md``: both pages again from the
    record the tier's last run saved (``docs/realk8s.json``) and the matrix's document."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: {sys.argv[0]} PAGE (e.g. docs/realk8s.md)", file=sys.stderr)
        return 2
    page = Path(args[0])
    write_docs(load(page.with_suffix(".json")), page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
