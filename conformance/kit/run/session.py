"""The run's session: what happens around the checks, from the first collected test to the
last report line. Registered by `conformance.plugin` (hooks and options only), as xdist keeps
its ``DSession`` apart from its plugin module.

- `XdistController` hands the run's identity to each xdist worker;
- `RunReporter` collects conformance results (xdist reports arrive in the controller too) and,
  at the end, writes ``summary.json`` (with the rule table and the node-by-node matrices) and
  the JUnit properties, dumps and deletes the run namespace (`end_run`), ends the terminal
  output with one line per rule, and puts the report's block at the top of pytest-html's page;
- `ExitGate` sorts outcomes into "rule broken" and "could not test" (nodes left out on the
  suite's own judgement included) and sets the exit code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from time import monotonic
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.runstate import FAILED, Record, RunInfo, peek, read_value
from conformance.kit.base.settings import Settings
from conformance.kit.cluster.api import describe_api_error, make_api_client
from conformance.kit.cluster.discovery import DISCOVERY_RECORD, Discovery
from conformance.kit.cluster.lease import LeaseKeeper
from conformance.kit.cluster.namespace import (
    STALE_SWEEP_RECORD,
    StaleSweep,
    delete_namespace,
    dump_namespace,
)
from conformance.kit.cluster.nodes import Exclusion, unaccounted
from conformance.kit.cluster.pairs import plan_node_pairs
from conformance.kit.exchanges.reachability import SWEEP_RECORD, Sweep
from conformance.kit.probes.deploy import DEPLOYMENT_RECORD, Deployment
from conformance.kit.reporting.html import pytest_html_block
from conformance.kit.reporting.matrices import build_matrices, text_matrices
from conformance.kit.reporting.results import (
    PHASES,
    SummaryCollector,
    build_summary,
    exit_meaning,
    flaky_line,
    lossy_lines,
    shorten,
    write_summary,
)
from conformance.kit.reporting.rules import Coverage, rule_line, summarize_rules, verdict
from conformance.kit.run.cases import pair_plan
from conformance.kit.verdicts.failures import (
    ACCOUNTS_FOR_PROPERTY,
    FLAKY_PROPERTY,
    PLACE_PREFIX,
    UNTESTED_PROPERTY,
    failure_of,
)

SETTINGS_KEY = pytest.StashKey[Settings]()
RUN_KEY = pytest.StashKey[RunInfo]()
DISCOVERY_KEY = pytest.StashKey[Discovery]()

WORKERINPUT_KEY = "netconform_run"
RULE_PROPERTY = "rule"
#: Where the suite's checks live in node IDs (`conformance.kit.run.invocation`): a crashed xdist
#: worker's report carries nothing else to tell a check of the suite by.
SUITE_NODEID_PREFIX = "conformance/"
EXCLUDED_PROPERTY_PREFIX = "netconform.excluded."
#: The pod states and events of the run kept in ``summary.json`` (the file keeps them whole).
DUMP_LIMIT = 200_000

# Exit codes a CI gate relies on (README "Exit codes"); pytest's own codes pass through.
EXIT_RULES_HOLD = 0
EXIT_RULE_BROKEN = 1
EXIT_COULD_NOT_TEST = 2


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def recorded_discovery(run: RunInfo) -> Discovery | None:
    """The run's discovery, as the first collecting process recorded it (None before)."""
    return read_value(run, DISCOVERY_RECORD, Discovery.from_dict)


def crashed(report: pytest.TestReport) -> bool:
    """A report xdist made for a check whose worker died under it (phase ``???``)."""
    return bool(
        report.failed
        and report.when not in PHASES
        and report.nodeid.startswith(SUITE_NODEID_PREFIX)
    )


def deployment_of(record: Record | None) -> Deployment | None:
    """The finished deployment in a run-state record (None when absent or unfinished)."""
    if record is None or record.status != "done":
        return None
    try:
        return Deployment.from_dict(record.value)
    except (KeyError, TypeError, ValueError):
        return None


def deployment_status(record: Record | None) -> str:
    """``not started``, ``deploying``, ``ready`` or ``failed``, for people and JUnit."""
    if record is None:
        return "not started"
    return {"started": "deploying", "done": "ready", FAILED: "failed"}.get(
        record.status, record.status
    )


def run_properties(run: RunInfo, record: Record | None) -> list[tuple[str, str]]:
    """Run-wide JUnit properties: run id, namespace, deployment outcome, cluster facts."""
    properties = [
        ("netconform.run_id", run.run_id),
        ("netconform.namespace", run.namespace),
        ("netconform.deployment", deployment_status(record)),
    ]
    if record is not None and record.error:
        properties.append(("netconform.deployment_error", record.error.splitlines()[0][:500]))
    deployment = deployment_of(record)
    if deployment is not None and deployment.cluster is not None:
        properties.extend(deployment.cluster.junit_properties())
    return properties


def end_run(
    *,
    settings: Settings,
    run: RunInfo,
    record: Record | None,
    summary: dict[str, Any],
    reports_dir: Path,
    make_core: Callable[[], client.CoreV1Api] | None = None,
) -> list[str]:
    """Write the summary (``summary.json``), dump the run namespace (pod states, events) next
    to it and delete the namespace unless ``--keep-namespace``. Returns lines for the terminal
    summary.

    Runs in the controller (or the only process) whatever happened: failure, Ctrl-C, a crashed
    worker. Cleanup problems are reported, not raised, so the report still gets written.
    """
    lines: list[str] = []
    reports_dir.mkdir(parents=True, exist_ok=True)
    summary["namespace_dump"] = None
    if record is not None:  # a deployment started: a namespace may exist
        try:
            core = make_core() if make_core else client.CoreV1Api(make_api_client(settings))
            dump_path = reports_dir / f"{run.namespace}.txt"
            dump = dump_namespace(core, run.namespace, settings.timeouts)
            dump_path.write_text(dump + "\n")
            # Once per report: the HTML shows it in one section, not in every failed check.
            summary["namespace_dump"] = {"file": dump_path.name, "text": shorten(dump, DUMP_LIMIT)}
            lines.append(f"pod states and events of the run: {dump_path}")
            if settings.keep_namespace:
                lines.append(f"namespace {run.namespace} kept (--keep-namespace)")
            elif delete_namespace(core, run.namespace, settings.timeouts, wait=True):
                lines.append(f"namespace {run.namespace} deleted")
            else:
                lines.append(
                    f"namespace {run.namespace} still terminating after "
                    f"{settings.timeouts.namespace_delete:.0f}s; sweep later with --cleanup-stale"
                )
        except (ClusterError, ApiException, OSError) as exc:
            lines.append(
                f"cleanup of namespace {run.namespace} failed: {describe_api_error(exc)}; "
                "delete it by hand or run again with --cleanup-stale"
            )
    if record is not None and record.status == FAILED:
        lines.append(
            f"probe deployment failed: {record.error.splitlines()[0] if record.error else '?'}"
        )
    deployed = deployment_of(record)
    summary["run"] = {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "deployment": deployment_status(record),
        "deployment_error": (record.error or None) if record is not None else None,
        "deployment_seconds": deployed.seconds if deployed is not None else None,
    }
    lines.append(f"summary: {write_summary(reports_dir / 'summary.json', summary)}")
    return lines


class XdistController:
    """Hands the run's identity to each xdist worker (registered only when xdist is loaded)."""

    def __init__(self, run: RunInfo) -> None:
        self.run = run

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKERINPUT_KEY] = self.run.to_dict()


class LeaseRenewer:
    """Keeps the run namespace's lease (`conformance.kit.cluster.lease`) for the whole run, from the
    controller (or the only process), which outlives every xdist worker: renewing starts with
    the session but touches the cluster only once a deployment started (whichever process
    deploys creates the namespace, leased), and stops when pytest unconfigures, after the
    namespace was deleted. A SIGKILLed run stops renewing, so its lease runs out."""

    def __init__(self, config: pytest.Config, run: RunInfo) -> None:
        settings = config.stash[SETTINGS_KEY]
        self.keeper = LeaseKeeper(
            run.namespace,
            settings.run_lease,
            make_core=lambda: client.CoreV1Api(make_api_client(settings)),
            wanted=lambda: peek(run, DEPLOYMENT_RECORD) is not None,
            timeouts=settings.timeouts,
        )

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.keeper.start()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.keeper.stop()


class RunReporter:
    """Collects conformance results (xdist reports arrive here in the controller too) and, at
    the end of the session, writes the summary and JUnit properties, then dumps and deletes
    the run namespace. Registered only in the controller or the single process."""

    def __init__(
        self,
        config: pytest.Config,
        run: RunInfo,
        lease: LeaseKeeper | None = None,
        gate: ExitGate | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.lease = lease
        self.gate = gate
        self.collector = SummaryCollector()
        self.seen_conformance = False
        self.started = monotonic()
        self.lines: list[str] = []
        #: One line per rule and the text grids of broken rules: the very end of the output.
        self.rule_lines: list[str] = []
        #: The run's summary once written (the HTML report is drawn from it).
        self.summary: dict[str, Any] | None = None
        #: Node ID -> position in collection order, so reports keep the suite's order even when
        #: xdist workers report in the order they finish.
        self.collected: dict[str, int] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            self.collected.setdefault(item.nodeid, len(self.collected))

    @pytest.hookimpl(optionalhook=True)  # xdist's hook: the controller collects nothing itself
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        for nodeid in ids:
            self.collected.setdefault(nodeid, len(self.collected))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if crashed(report):
            # No verdict: the worker died under the check (xdist made this report for it).
            self.seen_conformance = True
            self.collector.record_phase(
                report.nodeid, "setup", "failed", report.duration, message=report.longreprtext
            )
            return
        if RULE_PROPERTY not in properties:
            return
        self.seen_conformance = True
        self.collector.record_phase(
            report.nodeid,
            report.when or "call",
            report.outcome,
            report.duration,
            message=report.longreprtext if report.failed else None,
            rule=str(properties[RULE_PROPERTY]),
            wasxfail=hasattr(report, "wasxfail"),
            properties=properties,
            skip_reason=skip_reason(report) if report.skipped else None,
            failure=failure_of(report),
        )
        if report.when == "call" and report.passed and FLAKY_PROPERTY in properties:
            # Passed only on a retry (see conformance.kit.verdicts.judge): a pass, but counted.
            self.collector.mark_flaky(report.nodeid, str(properties[FLAKY_PROPERTY]))

    @pytest.hookimpl(tryfirst=True)  # before LogXML writes the JUnit file
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        record = peek(self.run, DEPLOYMENT_RECORD)
        if record is None and not self.seen_conformance:
            return  # no conformance test ran: nothing to report, nothing to clean
        junit_properties(self.config, run_properties(self.run, record))
        results = sorted(
            self.collector.results(),
            key=lambda r: self.collected.get(r.nodeid, len(self.collected)),
        )
        flaky = self.collector.flaky()
        self.lines.extend(flaky_line(nodeid, flaky[nodeid]) for nodeid in sorted(flaky))
        self.lines.extend(lossy_lines(results))
        deployment = deployment_of(record)
        summary = build_summary(
            results,
            facts=deployment.cluster if deployment is not None else None,
            flaky=flaky,
            session_duration=monotonic() - self.started,
        )
        summary["exitstatus"] = int(session.exitstatus)  # the gate's code (see ExitGate)
        summary["exit_meaning"] = exit_meaning(summary["exitstatus"])
        found = recorded_discovery(self.run)
        if deployment is not None and deployment.cluster is not None:
            tested = deployment.cluster.nodes_tested
        else:
            tested = found.nodes if found is not None else ()
        rules = summarize_rules(results, flaky)
        matrices = build_matrices(results, flaky, tested)
        summary["rules"] = [rule.to_dict() for rule in rules]
        summary["matrices"] = [matrix.to_dict() for matrix in matrices]
        sampled = None
        if found is not None and found.error is None:
            settings = self.config.stash[SETTINGS_KEY]
            plan = pair_plan(settings.pairs, len(found.nodes), self.run.pairs_seed)
            checked = plan.describe(len(found.nodes))
            self.lines.append(f"pairs: {checked}")
            junit_properties(
                self.config,
                [("netconform.pairs", checked), ("netconform.pairs_seed", str(plan.seed))],
            )
            pairs = plan_node_pairs(found.nodes, plan)
            possible = len(found.nodes) * (len(found.nodes) - 1)
            sampled = checked if len(pairs) < possible else None
            summary["pairs"] = {
                "mode": settings.pairs,
                "sample": plan.sample,
                "seed": plan.seed,
                "checked": len(pairs),
                "possible": possible,
                "description": checked,
            }
        coverage = Coverage(
            nodes=tuple(tested),
            left_out=found.excluded if found is not None else {},
            families=found.family_plan if found is not None else Coverage().families,
            sampled=sampled,
        )
        judged = verdict(rules, coverage)
        summary["verdict"] = judged.to_dict()
        self.rule_lines = [
            f"verdict: {judged.text}",
            *(rule_line(rule) for rule in rules),
            *text_matrices(matrices),
        ]
        sweep = read_value(self.run, SWEEP_RECORD, Sweep.from_dict)
        if sweep is not None:
            summary["exchanges"] = {
                "planned": len(sweep.outcomes),
                "attempts": sum(o.attempts for o in sweep.outcomes.values()),
                "lost": sum(o.attempts - int(o.reached) for o in sweep.outcomes.values()),
                "seconds": sweep.seconds,
                **sweep.loss_totals(),
                "max_loss": 100 * self.config.stash[SETTINGS_KEY].max_loss_ratio,
            }
        stale = read_value(self.run, STALE_SWEEP_RECORD, StaleSweep.from_dict)
        if stale is not None:  # --cleanup-stale: what it deleted, and why it kept the rest
            summary["stale_namespaces"] = stale.to_dict()
            self.lines.extend(stale.lines())
        if self.lease is not None and (renewals := self.lease.summary()):
            self.lines.append(renewals)
        if found is not None:
            summary["excluded_nodes"] = {n: why.reason for n, why in sorted(found.excluded.items())}
            summary["families"] = {
                **found.family_plan.to_dict(),
                "narrowed": list(found.family_plan.narrowed),
            }
            gaps = self.gate.left_out if self.gate is not None else {}
            summary["nodes"] = {
                "tested": list(found.nodes),
                "left_out": {n: why.to_dict() for n, why in sorted(found.excluded.items())},
                "unaccounted": sorted(gaps),
            }
            junit_properties(
                self.config,
                [
                    (EXCLUDED_PROPERTY_PREFIX + n, why.reason)
                    for n, why in sorted(found.excluded.items())
                ],
            )
            self.lines.extend(found.exclusion_lines())
            self.lines.extend(found.family_plan.narrowing_lines())
            self.lines.extend(unaccounted_lines(gaps))
            if found.usage_error is not None:
                self.lines.append(f"ERROR: {found.usage_error}")
        self.lines.extend(
            end_run(
                settings=self.config.stash[SETTINGS_KEY],
                run=self.run,
                record=record,
                summary=summary,
                reports_dir=reports_dir(self.config),
            )
        )
        self.summary = summary

    # Outermost wrapper: the section comes after pytest's own short summary, so the output
    # ends with the rules.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> Generator[None, None, None]:
        result = yield
        if self.lines or self.rule_lines:
            terminalreporter.section("netconform")
            for line in [*self.lines, *self.rule_lines]:
                terminalreporter.write_line(line)
        return result

    @pytest.hookimpl(optionalhook=True)  # pytest-html's hook: only when it is installed
    def pytest_html_results_summary(self, prefix: list[str]) -> None:
        """The report's own block at the top of pytest-html's page (see
        `conformance.kit.reporting.html`)."""
        if self.summary is not None:
            prefix.append(pytest_html_block(self.summary, dump_href=self.dump_href(self.summary)))

    def dump_href(self, summary: Mapping[str, Any]) -> str | None:
        """The link from the HTML report to the pod states and events file beside the summary."""
        dump = summary.get("namespace_dump")
        htmlpath = getattr(self.config.option, "htmlpath", None)
        if not dump or not htmlpath:
            return None
        html_dir = (self.config.invocation_params.dir / htmlpath).resolve().parent
        target = reports_dir(self.config) / str(dump["file"])
        return Path(os.path.relpath(target, html_dir)).as_posix()


def skip_reason(report: pytest.TestReport) -> str | None:
    """Why a skipped report skipped (pytest keeps ``(path, line, "Skipped: reason")``)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None


def gate_exit_status(status: int, *, broken: bool, untested: bool) -> int:
    """The exit code of a run: 2 when a check could not test (that wins), 1 when a rule is
    broken, else pytest's. pytest's codes other than 0 and 1 (interrupted, internal error,
    usage error, no tests collected) are kept as they are."""
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(status)
    if untested:
        return EXIT_COULD_NOT_TEST
    if broken:
        return EXIT_RULE_BROKEN
    return int(status)


def unaccounted_lines(gaps: Mapping[str, Exclusion]) -> list[str]:
    """Why a run exits 2 for nodes it left out on its own judgement, and how to accept it."""
    if not gaps:
        return []
    kinds = sorted({why.kind for why in gaps.values()})
    return [
        f"could not test {len(gaps)} node(s) the run was asked for, left out by the suite: "
        + "; ".join(f"{name} ({why.reason})" for name, why in gaps.items())
        + f" (exit 2; accept with --allow-excluded {','.join(kinds)} where allowed, or "
        + " ".join(f"--exclude-node {name}" for name in gaps)
        + ")"
    ]


class ExitGate:
    """Sorts conformance outcomes into "rule broken" (a check failed) and "could not test" (an
    error in any phase of a check, a crashed worker, a collection error, a node the suite left
    out on its own judgement that no failed check accounts for) and sets the session's exit
    status from them. Registered in the controller (or the only process)."""

    def __init__(self, run: RunInfo | None = None) -> None:
        self.run = run
        self.broken: list[str] = []
        self.untested: list[str] = []
        #: node -> exclusion kinds its failed checks account for (``ACCOUNTS_FOR``).
        self.accounted: dict[str, set[str]] = {}
        #: The nodes the suite left out that no failed check accounts for (exit 2).
        self.left_out: dict[str, Exclusion] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if crashed(report):
            self.untested.append(report.nodeid)
            return
        properties = dict(report.user_properties)
        if not report.failed or RULE_PROPERTY not in properties:
            return
        # A failed call is a verdict on the network; a failed setup/teardown (a could-not-test
        # error included, see the plugin's pytest_runtest_makereport) is not.
        if report.when != "call" or UNTESTED_PROPERTY in properties:
            self.untested.append(report.nodeid)
            return
        self.broken.append(report.nodeid)
        node = properties.get(PLACE_PREFIX + "node")
        kinds = str(properties.get(ACCOUNTS_FOR_PROPERTY) or "")
        if node and kinds:
            self.accounted.setdefault(str(node), set()).update(kinds.split(","))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.untested.append(report.nodeid)

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # before the reporters read the status
    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int
    ) -> Generator[None, None, None]:
        # A session finished outside pytest's main (pytester's getitems) has no exitstatus yet.
        status = getattr(session, "exitstatus", exitstatus)
        found = recorded_discovery(self.run) if self.run is not None else None
        if found is not None and found.usage_error is not None:
            # xdist workers ran nothing of the suite (see the plugin's collection hook).
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return (yield)
        if found is not None and (self.broken or self.untested or status == pytest.ExitCode.OK):
            self.left_out = unaccounted(found.excluded, self.accounted)
        session.exitstatus = gate_exit_status(
            status, broken=bool(self.broken), untested=bool(self.untested or self.left_out)
        )
        return (yield)


def reports_dir(config: pytest.Config) -> Path:
    """Where the run's reports go: beside the JUnit file, else ``reports/`` in the working
    directory."""
    xmlpath = getattr(config.option, "xmlpath", None)
    if xmlpath:
        return Path(xmlpath).resolve().parent
    return config.invocation_params.dir / "reports"


def junit_properties(config: pytest.Config, properties: list[tuple[str, str]]) -> None:
    """Add run-wide properties to the JUnit report, when one is written."""
    # LogXML (--junitxml) is registered anonymously; find it by its public method. Under xdist
    # record_testsuite_property does not reach the controller, so the controller adds them.
    for plugin in config.pluginmanager.get_plugins():
        add = getattr(plugin, "add_global_property", None)
        if callable(add):
            for name, value in properties:
                add(name, value)
