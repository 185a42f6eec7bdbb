"""docs/upstream-netpol.md from two runs of upstream's Netpol suite: against a lab that
enforces NetworkPolicy (every spec must pass) and against one that enforces none (every spec
expecting a denied connection must fail). What each run must show, and the document."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass

from peer import PeerRun, SpecResult

#: The Netpol suite's specs: ``peer.sh``'s focus. Its skip is narrower than ``SCTP``: two TCP
#: specs mention SCTP in their names ("... even if the plugin doesn't support SCTP") and run
#: here; only the specs needing SCTP in the kernel (which the lab's kernel lacks) are skipped.
NETPOL_FOCUS = "Netpol"
NETPOL_SKIP = r"\[Feature:SCTPConnectivity\]"
REGENERATE = (
    "NETCONFORM_UPSTREAM_NETPOL=full NETCONFORM_UPSTREAM_NETPOL_DOC=docs/upstream-netpol.md "
    "NETCONFORM_REALK8S=../shared/realk8s .venv/bin/pytest tests/e2e/test_upstream_netpol.py"
)
# What upstream's ValidateOrFail logs when a truth table's first probe round had wrong cells
# and it probes the whole table again (test/e2e/network/netpol/test_helper.go).
_SECOND_TRY = "retrying (SECOND TRY)"
_FIRST_TRY = "Validating reachability matrix... (FIRST TRY)"
# What its probe workers log when a cell's first probe disagrees with the expected table (it
# probes that cell again, about once a second, up to a dozen times: probe.go), and what a
# table's final verdict logs per wrong cell (a pod to itself: "A -> A").
_FIRST_PROBE_WRONG = re.compile(r"probe #1 :: connectivity (?:not )?expected :: ")
_WRONG_CELL = re.compile(r"Validation of (\S+) -> (\S+) FAILED")

_TCP = "[sig-network] Netpol NetworkPolicy between server and client"
_FEATURE = "[Feature:NetworkPolicy]"
#: The specs that pass where nothing is enforced: the API specs, and the scenarios whose every
#: truth table expects every connection to go through.
PASS_WITHOUT_ENFORCEMENT = frozenset(
    {
        "[sig-network] Netpol API should support creating NetworkPolicy API operations",
        "[sig-network] Netpol API should support creating NetworkPolicy API with endport field",
        f"{_TCP} should support allow-all policy {_FEATURE}",
        # A namespaceSelector of {} allows every pod of every namespace: the whole table open.
        f"{_TCP} should enforce policy to allow ingress traffic from pods in all namespaces"
        f" {_FEATURE}",
    }
)


@dataclass(frozen=True)
class NetpolRun:
    """One run of the Netpol suite against one lab (``lab``: what it was, for people), with
    the machine's load around it."""

    lab: str
    peer: PeerRun
    boot_seconds: float | None
    load_before: float | None
    load_after: float | None
    #: What stopped the run short of every spec (ginkgo's suite timeout), for the document.
    cut_short: str = ""


def second_tries(output: str) -> int:
    """Truth tables that upstream probed a second time because the first round was wrong."""
    return output.count(_SECOND_TRY)


def truth_tables(output: str) -> int:
    """Truth tables upstream validated (first rounds)."""
    return output.count(_FIRST_TRY)


def first_probes_wrong(output: str) -> int:
    """Cells whose first probe disagreed with upstream's expected table."""
    return len(_FIRST_PROBE_WRONG.findall(output))


def hairpin_cells_wrong(output: str) -> int:
    """Cells of a pod to itself that ended a probe round against upstream's expected table
    (upstream's verdicts leave them out)."""
    return sum(1 for source, target in _WRONG_CELL.findall(output) if source == target)


def failed_without_enforcement(run: NetpolRun) -> list[str]:
    """The specs whose verdict against a lab enforcing nothing is off: every spec expecting a
    denied connection must fail, and only those (a spec the suite's timeout stopped is no
    verdict either way)."""
    off = []
    for spec in run.peer.ran():
        if spec.state == "timedout" and run.cut_short:
            continue
        must_pass = spec.name in PASS_WITHOUT_ENFORCEMENT
        if must_pass and spec.state != "passed":
            off.append(f"{spec.state} (expected passed): {spec.name}")
        elif not must_pass and spec.state != "failed":
            off.append(f"{spec.state} (expected failed): {spec.name}")
    return off


def _cell(spec: SpecResult | None) -> str:
    return f"{spec.state} | {spec.seconds:.0f}" if spec else "not run | "


def _figures(run: NetpolRun) -> list[str]:
    ran = run.peer.ran()
    states = sorted({spec.state for spec in ran})
    counts = ", ".join(f"{sum(1 for s in ran if s.state == state)} {state}" for state in states)
    return [
        f"- lab: {run.lab}, booted in {_seconds(run.boot_seconds)}",
        f"- netpeer.test: exit {run.peer.returncode} after {run.peer.seconds:.0f} s;"
        f" {len(ran)} specs: {counts}",
        f"- truth tables validated: {truth_tables(run.peer.output)}, of which probed a second"
        f" time after a wrong first round: {second_tries(run.peer.output)}",
        f"- cells whose first probe disagreed with the expected table:"
        f" {first_probes_wrong(run.peer.output)}; cells of a pod to itself that ended a round"
        f" disagreeing (left out by upstream): {hairpin_cells_wrong(run.peer.output)}",
        f"- load average (1 min) before and after: {_load(run.load_before)},"
        f" {_load(run.load_after)}",
        *([f"- cut short: {run.cut_short}"] if run.cut_short else []),
    ]


def _seconds(value: float | None) -> str:
    return "(not recorded)" if value is None else f"{value:.0f} s"


def _load(value: float | None) -> str:
    return "(not recorded)" if value is None else f"{value:.1f}"


def render_netpol_doc(
    enforcing: NetpolRun,
    ignoring: NetpolRun,
    focused: Mapping[str, str],
    when: datetime.datetime | None = None,
) -> str:
    """The document for the two runs, in Markdown; ``focused`` names CI's specs with what of
    the engine each proves."""
    when = when or datetime.datetime.now(datetime.UTC)
    with_policy = {spec.name: spec for spec in enforcing.peer.ran()}
    without = {spec.name: spec for spec in ignoring.peer.ran()}
    lines = [
        "# Upstream's Netpol e2e against netlab",
        "",
        "Generated by `tests/e2e/test_upstream_netpol.py` from real runs; do not edit by hand.",
        "Upstream Kubernetes v1.28.4's `[sig-network] Netpol` suite (test/e2e/network/netpol,",
        "the `netpeer.test` of `../shared/realk8s/peer.sh`), run by its own ginkgo binary with",
        f"`--ginkgo.focus={NETPOL_FOCUS} --ginkgo.skip='{NETPOL_SKIP}'"
        " --kube-api-content-type=application/json`",
        "against a 3-node netlab booted with the agnhost image (`netlab up --image`), then",
        "against one booted with `--no-network-policy`. Each scenario builds 3 namespaces x 3",
        "pods, writes its policies and probes every ordered pod pair through the pods'",
        "Services (`agnhost connect`, 1 s timeout, three probes at a time) into a truth table;",
        "a cell whose probe disagrees with the expected table is probed again, about once a",
        "second, up to a dozen times, and a table with wrong cells is probed once more",
        "before the spec fails. So a spec that fails takes minutes, and the figures below",
        "count the first probes that disagreed: on a lab that enforces in time, only the",
        "cells of a pod reaching itself (below).",
        "",
        "The skip is narrower than `SCTP`: the two specs named \"... even if the plugin doesn't",
        'support SCTP" send TCP and run here; only `[Feature:SCTPConnectivity]` specs, which',
        "need SCTP in the kernel (the lab's kernel has none), are left out.",
        "",
        f"- run: {when:%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs,"
        " shared with other work)",
        f"- regenerate: `{REGENERATE}`",
        "",
        "## Against a lab that enforces NetworkPolicy",
        "",
        *_figures(enforcing),
        "",
        "## Against a lab that enforces none (`netlab up --no-network-policy`)",
        "",
        *_figures(ignoring),
        f"- off (a spec expecting a denial that passed, or one expecting none that failed):"
        f" {len(failed_without_enforcement(ignoring))}",
        "",
        "## Every spec",
        "",
        "CI (`tests/e2e/test_upstream_netpol.py`, always) runs the specs with a feature named;",
        "the rest run with `NETCONFORM_UPSTREAM_NETPOL=full`. Seconds are ginkgo's, per spec.",
        "",
        "| spec | in CI, for | enforcing | s | not enforcing | s |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for name in sorted(set(with_policy) | set(without)):
        short = name.removeprefix("[sig-network] Netpol ").strip()
        lines.append(
            f"| {short} | {focused.get(name, '')} | {_cell(with_policy.get(name))}"
            f" | {_cell(without.get(name))} |"
        )
    lines += [
        "",
        "## Where upstream and the lab disagree",
        "",
        "**A pod reaching itself through its Service.** Upstream's expected truth tables mark",
        "a pod's connection to itself as denied whenever the pod is isolated for ingress and",
        "no rule names it; the lab lets it through. The API documentation decides for the lab:",
        '"a Pod cannot block access to itself" (concepts/services-networking/network-policies).',
        "Upstream knows its table is wrong there and leaves those cells out of every verdict",
        "(`warning: this test doesn't take into consideration hairpin traffic ...: 9 cases",
        "ignored`, `ignoreLoopback` in test_helper.go), so the disagreement fails nothing; it",
        "costs time, as upstream probes each such cell about a dozen times, a second apart,",
        "before it takes the lab's answer.",
        "The lab's own tables (tests/lab/test_netpol.py, `via_service`) hold a pod reaching",
        "itself through its Service as allowed.",
        "",
    ]
    return "\n".join(lines)
