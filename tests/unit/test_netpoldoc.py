"""``netpoldoc``: what a run of upstream's Netpol suite against a lab enforcing nothing must
show (every spec expecting a denial fails, only those), the truth-table tries read from the
peer's log, and the document both runs make."""

from __future__ import annotations

import datetime

from netpoldoc import (
    PASS_WITHOUT_ENFORCEMENT,
    NetpolRun,
    failed_without_enforcement,
    first_probes_wrong,
    hairpin_cells_wrong,
    render_netpol_doc,
    second_tries,
    truth_tables,
)
from peer import PeerRun, SpecResult

DENY = (
    "[sig-network] Netpol NetworkPolicy between server and client"
    " should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"
)
API = sorted(name for name in PASS_WITHOUT_ENFORCEMENT if " API " in name)[0]
SCTP = "[sig-network] Netpol [Feature:SCTPConnectivity] ... using SCTP should ..."
LOG = (
    "STEP: Validating reachability matrix... (FIRST TRY) @ 1\n"
    "INFO:  probe #1 :: connectivity not expected :: x-1/a -> 10.96.0.20\n"
    "INFO:  probe #2 :: connectivity not expected :: x-1/a -> 10.96.0.20\n"
    "INFO:  probe #1 :: connectivity expected :: y-1/b -> 10.96.0.21 :: stderr - TIMEOUT\n"
    "INFO: Validation of x-1/a -> x-1/a FAILED !!!\n"
    "INFO: Validation of y-1/b -> x-1/c FAILED !!!\n"
    "failed first probe 5 wrong results ... retrying (SECOND TRY)\n"
    "STEP: Validating reachability matrix... (FIRST TRY) @ 2\n"
)


def run(*specs: SpecResult, output: str = "", lab: str = "healthy (no fault)") -> NetpolRun:
    return NetpolRun(
        lab=lab,
        peer=PeerRun(returncode=1, seconds=100.0, output=output, specs=specs),
        boot_seconds=3.0,
        load_before=1.0,
        load_after=2.0,
    )


def test_a_lab_enforcing_nothing_is_judged_by_what_each_spec_expects() -> None:
    right = run(
        SpecResult(DENY, "failed", 70.0),
        SpecResult(API, "passed", 2.0),
        SpecResult(SCTP, "skipped", 0.0),
    )
    assert failed_without_enforcement(right) == []
    wrong = run(SpecResult(DENY, "passed", 30.0), SpecResult(API, "failed", 2.0))
    assert failed_without_enforcement(wrong) == [
        f"passed (expected failed): {DENY}",
        f"failed (expected passed): {API}",
    ]


def test_a_spec_that_could_not_finish_is_off_too() -> None:
    assert failed_without_enforcement(run(SpecResult(DENY, "timedout", 900.0))) == [
        f"timedout (expected failed): {DENY}"
    ]


def test_tables_tries_and_wrong_cells_are_read_from_upstreams_log() -> None:
    assert (truth_tables(LOG), second_tries(LOG)) == (2, 1)
    assert (first_probes_wrong(LOG), hairpin_cells_wrong(LOG)) == (2, 1)
    assert (truth_tables(""), second_tries(""), first_probes_wrong("")) == (0, 0, 0)


def test_the_document_lists_every_spec_with_both_verdicts() -> None:
    enforcing = run(SpecResult(DENY, "passed", 30.4), SpecResult(API, "passed", 2.0), output=LOG)
    ignoring = run(
        SpecResult(DENY, "failed", 71.0),
        SpecResult(API, "passed", 2.2),
        lab="healthy (no fault), no NetworkPolicy enforcement",
    )
    doc = render_netpol_doc(
        enforcing,
        ignoring,
        {DENY: "default deny (TCP)"},
        when=datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC),
    )
    short = DENY.removeprefix("[sig-network] Netpol ")
    assert f"| {short} | default deny (TCP) | passed | 30 | failed | 71 |" in doc
    assert (
        "- truth tables validated: 2, of which probed a second time after a wrong first round: 1"
        in doc
    )
    assert "- lab: healthy (no fault), no NetworkPolicy enforcement, booted in 3 s" in doc
    assert (
        "- off (a spec expecting a denial that passed, or one expecting none that failed): 0" in doc
    )
    assert "2026-12-04 00:00 UTC" in doc
    assert SCTP not in doc


def test_a_run_cut_short_by_the_suite_timeout_judges_only_what_finished() -> None:
    cut = NetpolRun(
        lab="healthy (no fault), no NetworkPolicy enforcement",
        peer=PeerRun(
            returncode=1,
            seconds=3630.0,
            output="",
            specs=(SpecResult(DENY, "timedout", 900.0), SpecResult(API, "passed", 2.0)),
        ),
        boot_seconds=None,
        load_before=None,
        load_after=None,
        cut_short="ginkgo's 3600 s suite timeout",
    )
    assert failed_without_enforcement(cut) == []
    doc = render_netpol_doc(cut, cut, {})
    assert "booted in (not recorded)" in doc
    assert "- cut short: ginkgo's 3600 s suite timeout" in doc
