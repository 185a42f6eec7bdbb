"""pytest hooks of k8s-netconform: options, markers, parametrization from the discovered nodes,
xdist wiring, report hooks and the end-of-run cleanup. The work lives in ``conformance.kit``;
fixtures live in ``conformance/conftest.py``.

Nothing here touches a cluster unless a conformance test is collected: nodes are discovered in
``pytest_generate_tests`` of a conformance test, probes are deployed by the first test that
needs them, and the namespace is deleted at the end only if a deployment started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from time import monotonic
from typing import Any

import pytest

from conformance.kit.agent_client import AgentError
from conformance.kit.cluster import ClusterError, Discovery, discover
from conformance.kit.namespace import namespace_name, new_run_id
from conformance.kit.pairs import plan_checks, plan_node_pairs, plan_same_node_pairs
from conformance.kit.probes import (
    ProbeDeploymentError,
    RunInfo,
    end_run,
    facts_from_state,
    images_to_pull,
    read_state,
    run_properties,
)
from conformance.kit.report import (
    FLAKY_PROPERTY,
    SummaryCollector,
    build_summary,
    flaky_line,
    rule_from_docstring,
)
from conformance.kit.settings import (
    DEFAULT_PROBE_IMAGE,
    IMAGE_PULL_POLICIES,
    IP_FAMILIES,
    Settings,
    parse_image_pull_policy,
    parse_ip_family,
    parse_max_nodes,
    parse_node_selector,
    parse_probe_image,
    parse_probe_timeout,
    parse_pull_secret,
    parse_taint_toleration,
)

SETTINGS_KEY = pytest.StashKey[Settings]()
RUN_KEY = pytest.StashKey[RunInfo]()
DISCOVERY_KEY = pytest.StashKey[Discovery]()
DUMP_KEY = pytest.StashKey[Any]()  # callable -> str, set once probes exist (see conftest)

WORKERINPUT_KEY = "netconform_run"
RULE_PROPERTY = "rule"
PARAM_FIXTURES = ("proto", "family", "probe_node", "node_pair")
DEFAULT_PROTOCOLS = ("tcp", "udp", "icmp")

COULD_NOT_TEST = (AgentError, ClusterError, ProbeDeploymentError)

# Exit codes a CI gate relies on (README "Exit codes"); pytest's own codes pass through.
EXIT_RULES_HOLD = 0
EXIT_RULE_BROKEN = 1
EXIT_COULD_NOT_TEST = 2
DISCOVERY_FILE = "discovery.json"
EXCLUDED_PROPERTY_PREFIX = "netconform.excluded."

MARKERS = (
    "netconform: a k8s-netconform conformance check (added automatically)",
    "node_cidr: the pod-IP-inside-its-node's-podCIDR check; deselect it with "
    '-m "not node_cidr" where the IPAM ignores node podCIDRs',
    "multinode: needs at least two selected nodes; skipped otherwise",
    "disruptive: kills a probe container (the sandbox pod only)",
)


# --- options ---------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netconform", "k8s-netconform: Kubernetes network model conformance")
    # Another plugin (pytest-helm-charts, pytest-kind...) may own --kubeconfig: then share it;
    # Settings reads the value by option string, whatever its dest.
    with contextlib.suppress(ValueError, argparse.ArgumentError):
        group.addoption(
            "--kubeconfig",
            dest="netconform_kubeconfig",
            default=None,
            metavar="PATH",
            help="kubeconfig of the cluster under test (default: $KUBECONFIG, then "
            "~/.kube/config, then in-cluster configuration)",
        )
    group.addoption(
        "--context",
        dest="netconform_context",
        default=None,
        metavar="NAME",
        help="kubeconfig context to use (default: the current context)",
    )
    group.addoption(
        "--probe-image",
        dest="netconform_probe_image",
        default=DEFAULT_PROBE_IMAGE,
        type=parse_probe_image,
        metavar="IMAGE",
        help=f"image of the probe pods; needs python3 (default: {DEFAULT_PROBE_IMAGE})",
    )
    group.addoption(
        "--image-pull-policy",
        dest="netconform_image_pull_policy",
        default="IfNotPresent",
        type=parse_image_pull_policy,
        metavar="POLICY",
        help=f"imagePullPolicy of the probe pods: {', '.join(IMAGE_PULL_POLICIES)} "
        "(default: IfNotPresent)",
    )
    group.addoption(
        "--node-selector",
        dest="netconform_node_selector",
        default=parse_node_selector(""),
        type=parse_node_selector,
        metavar="K=V[,K=V...]",
        help="only probe nodes carrying all these labels",
    )
    group.addoption(
        "--max-nodes",
        dest="netconform_max_nodes",
        default=None,
        type=parse_max_nodes,
        metavar="N",
        help="probe at most N nodes (the first N by name)",
    )
    group.addoption(
        "--include-control-plane",
        dest="netconform_include_control_plane",
        action="store_true",
        default=False,
        help="also probe control-plane nodes: the probes tolerate the control-plane taints",
    )
    group.addoption(
        "--tolerate-taint",
        dest="netconform_tolerate_taints",
        action="append",
        default=None,
        type=parse_taint_toleration,
        metavar="KEY[:EFFECT]",
        help="also probe nodes carrying this taint, the probes tolerating it (any value; every "
        "effect when none is given); repeatable",
    )
    group.addoption(
        "--image-pull-secret",
        dest="netconform_image_pull_secrets",
        action="append",
        default=None,
        type=parse_pull_secret,
        metavar="[NAMESPACE/]NAME",
        help="copy this Secret (from namespace default unless given) into the run namespace "
        "and list it in every probe pod's imagePullSecrets; repeatable",
    )
    group.addoption(
        "--list-images",
        dest="netconform_list_images",
        action="store_true",
        default=False,
        help="print every image a run would pull, one per line, and exit without touching "
        "the cluster",
    )
    group.addoption(
        "--probe-timeout",
        dest="netconform_probe_timeout",
        default=5.0,
        type=parse_probe_timeout,
        metavar="SECONDS",
        help="timeout of one network attempt inside a probe (default: 5)",
    )
    group.addoption(
        "--keep-namespace",
        dest="netconform_keep_namespace",
        action="store_true",
        default=False,
        help="leave the run namespace and its probes in place for debugging",
    )
    group.addoption(
        "--ip-family",
        dest="netconform_ip_family",
        default="auto",
        type=parse_ip_family,
        metavar="FAMILY",
        help=f"IP families to test: {', '.join(IP_FAMILIES)} (default: auto, from the nodes' "
        "podCIDRs or the pods' IPs)",
    )
    group.addoption(
        "--cleanup-stale",
        dest="netconform_cleanup_stale",
        action="store_true",
        default=False,
        help="first delete namespaces left behind by earlier (killed) runs, then test",
    )


# --- --list-images ---------------------------------------------------------------------------


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--list-images``: print the images, one per line and nothing else, and stop before any
    session (so before any cluster access)."""
    if not config.getoption("netconform_list_images", False) or config.option.help:
        return None
    for image in images_to_pull(Settings.from_config(config)):
        sys.stdout.write(image + "\n")
    sys.stdout.flush()
    return int(pytest.ExitCode.OK)


# --- configuration and xdist -----------------------------------------------------------------


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class _XdistController:
    """Hands the run's identity to each xdist worker (registered only when xdist is loaded)."""

    def __init__(self, run: RunInfo) -> None:
        self.run = run

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKERINPUT_KEY] = self.run.to_dict()


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash[SETTINGS_KEY] = Settings.from_config(config)
    if _is_worker(config):
        workerinput: dict[str, Any] = getattr(config, "workerinput")  # noqa: B009
        config.stash[RUN_KEY] = RunInfo.from_dict(workerinput[WORKERINPUT_KEY])
        return
    # Names only: nothing is created in the cluster until a test needs probes.
    run_id = new_run_id()
    run = RunInfo(
        run_id=run_id,
        namespace=namespace_name(run_id),
        shared_dir=tempfile.mkdtemp(prefix="netconform-"),
    )
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(_RunReporter(config, run), "netconform-reporter")
    config.pluginmanager.register(_ExitGate(), "netconform-exit-gate")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistController(run), "netconform-xdist-controller")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and not _is_worker(config):
        shutil.rmtree(run.shared_dir, ignore_errors=True)


# --- collection ------------------------------------------------------------------------------


def _is_conformance_module(module: Any) -> bool:
    name = getattr(module, "__name__", "")
    return bool(name.startswith("conformance.test_") or name.startswith("test_")) and (
        Path(getattr(module, "__file__", "") or "").parent == Path(__file__).parent
    )


def discovery_for(config: pytest.Config) -> Discovery:
    """Nodes and IP families of the cluster, read once per process."""
    found = config.stash.get(DISCOVERY_KEY, None)
    if found is None:
        found = discover(config.stash[SETTINGS_KEY])
        config.stash[DISCOVERY_KEY] = found
        _record_discovery(config.stash[RUN_KEY], found)
    return found


def _record_discovery(run: RunInfo, found: Discovery) -> None:
    # The collecting processes (xdist workers) hand it to the reporting one through the run's
    # shared directory; every worker finds the same, so the last write is as good as the first.
    path = Path(run.shared_dir) / DISCOVERY_FILE
    tmp = path.with_name(f"{DISCOVERY_FILE}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(found.to_dict(), sort_keys=True))
        tmp.replace(path)


def recorded_discovery(run: RunInfo) -> Discovery | None:
    """The discovery a collecting process of this run recorded, if any."""
    try:
        return Discovery.from_dict(json.loads((Path(run.shared_dir) / DISCOVERY_FILE).read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _cases(metafunc: pytest.Metafunc, discovery: Discovery) -> list[tuple[dict[str, Any], str]]:
    """Every (fixture values, test ID) of one check, in a stable order.

    IDs read like the place: ``udp-node-1->node-2`` (pairs), ``tcp-node-1`` (per node). The
    family leads the ID (``ipv6-tcp-node-1->node-2``) whenever the tested families are not
    IPv4 only, so IPv4-only clusters keep the IDs existing expectations use.
    """
    names = set(metafunc.fixturenames)
    protocols: tuple[str, ...] = tuple(getattr(metafunc.module, "PROTOCOLS", DEFAULT_PROTOCOLS))
    cases: list[tuple[dict[str, Any], str]] = [({}, "")]

    def extend(axis: list[tuple[dict[str, Any], str]]) -> None:
        nonlocal cases
        cases = [
            ({**values, **more}, "-".join(p for p in (ident, part) if p))
            for values, ident in cases
            for more, part in axis
        ]

    if "family" in names:
        families = tuple(discovery.families)
        show = families != (4,)
        extend([({"family": f}, f"ipv{f}" if show else "") for f in families])
    if "node_pair" in names:
        nodes = list(discovery.nodes)
        pairs = plan_same_node_pairs(nodes, nodes[:1]) + plan_node_pairs(nodes)
        if "proto" in names:
            extend(
                [
                    ({"proto": c.proto, "node_pair": c.pair}, c.id)
                    for c in plan_checks(protocols, pairs)
                ]
            )
        else:
            extend([({"node_pair": p}, f"{p.src}->{p.dst}") for p in pairs])
    elif "proto" in names:
        extend([({"proto": p}, p) for p in protocols])
    if "probe_node" in names:
        extend([({"probe_node": n}, n) for n in discovery.nodes])
    return cases


@pytest.hookimpl(trylast=True)  # after @pytest.mark.parametrize: the place ends the test ID
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [n for n in PARAM_FIXTURES if n in metafunc.fixturenames]
    if not wanted or not _is_conformance_module(metafunc.module):
        return
    discovery = discovery_for(metafunc.config)
    if discovery.error is not None:
        # One placeholder case: the test errors in setup with the cause (never passes).
        metafunc.parametrize(
            wanted, [pytest.param(*([None] * len(wanted)), id="cluster-unavailable")]
        )
        return
    params = [
        pytest.param(*(values[n] for n in wanted), id=ident or "all")
        for values, ident in _cases(metafunc, discovery)
    ]
    if not params:
        reason = "nothing to test with the selected nodes (" + ", ".join(discovery.nodes) + ")"
        if "node_pair" in wanted and len(discovery.nodes) < 2:
            reason = (
                "cross-node checks need at least two selected nodes; "
                + discovery.explain_excluded()
            )
        params = [
            pytest.param(
                *([None] * len(wanted)), id="not-applicable", marks=pytest.mark.skip(reason=reason)
            )
        ]
    metafunc.parametrize(wanted, params)


def rule_of(item: pytest.Item) -> str:
    """The rule a check states in its docstring (empty for non-conformance tests)."""
    return rule_from_docstring(getattr(getattr(item, "obj", None), "__doc__", None))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not _is_conformance_module(module):
            continue
        item.add_marker(pytest.mark.netconform)
        item.user_properties.append((RULE_PROPERTY, rule_of(item)))


# --- reports ---------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if item.get_closest_marker("netconform") is None:
        return report
    if (
        report.when == "call"
        and report.failed
        and call.excinfo is not None
        and call.excinfo.errisinstance(COULD_NOT_TEST)
    ):
        # The probes could not be asked (exec failed, API refused...): no verdict on the network.
        # Report it as an error, like a failed fixture, never as a broken rule.
        report.when = "setup"
        report.longrepr = f"COULD NOT TEST: {call.excinfo.value}"
    if report.when == "call" or (report.when == "setup" and not report.passed):
        report.sections.append(("rule", rule_of(item)))
    if report.failed and report.when == "call":
        dump = item.config.stash.get(DUMP_KEY, None)
        if dump is not None:
            report.sections.append(("probe pods and events", dump()))
    return report


class _RunReporter:
    """Collects conformance results (xdist reports arrive here in the controller too) and, at
    the end of the session, writes the summary and JUnit properties, then dumps and deletes
    the run namespace. Registered only in the controller or the single process."""

    def __init__(self, config: pytest.Config, run: RunInfo) -> None:
        self.config = config
        self.run = run
        self.collector = SummaryCollector()
        self.seen_conformance = False
        self.started = monotonic()
        self.lines: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
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
        )
        if report.when == "call" and report.passed and FLAKY_PROPERTY in properties:
            # Passed only on a retry (see conformance.kit.reachability): a pass, but counted.
            self.collector.mark_flaky(report.nodeid, str(properties[FLAKY_PROPERTY]))

    @pytest.hookimpl(tryfirst=True)  # before LogXML writes the JUnit file
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state = read_state(self.run)
        if not state.touched_cluster and not self.seen_conformance:
            return  # no conformance test ran: nothing to report, nothing to clean
        _junit_properties(self.config, run_properties(self.run, state))
        results = self.collector.results()
        flaky = self.collector.flaky()
        self.lines.extend(flaky_line(nodeid, flaky[nodeid]) for nodeid in sorted(flaky))
        summary = build_summary(
            results,
            facts=facts_from_state(state),
            flaky=flaky,
            session_duration=monotonic() - self.started,
        )
        summary["exitstatus"] = int(session.exitstatus)  # the gate's code (see _ExitGate)
        found = recorded_discovery(self.run)
        if found is not None:
            summary["excluded_nodes"] = dict(sorted(found.excluded.items()))
            _junit_properties(
                self.config,
                [(EXCLUDED_PROPERTY_PREFIX + n, why) for n, why in sorted(found.excluded.items())],
            )
            self.lines.extend(found.exclusion_lines())
        self.lines.extend(
            end_run(
                settings=self.config.stash[SETTINGS_KEY],
                run=self.run,
                state=state,
                summary=summary,
                reports_dir=_reports_dir(self.config),
            )
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.section("netconform")
            for line in self.lines:
                terminalreporter.write_line(line)


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


class _ExitGate:
    """Sorts conformance outcomes into "rule broken" (a check failed) and "could not test" (an
    error in any phase of a check, a crashed worker, a collection error) and sets the session's
    exit status from them. Registered in the controller (or the only process)."""

    def __init__(self) -> None:
        self.broken: list[str] = []
        self.untested: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.failed or RULE_PROPERTY not in dict(report.user_properties):
            return
        # A failed call is a verdict on the network; a failed setup/teardown (COULD NOT TEST
        # included, see pytest_runtest_makereport) or an xdist crash report ("???") is not.
        (self.broken if report.when == "call" else self.untested).append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.untested.append(report.nodeid)

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # before the reporters read the status
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, None, None]:
        session.exitstatus = gate_exit_status(
            session.exitstatus, broken=bool(self.broken), untested=bool(self.untested)
        )
        return (yield)


def _reports_dir(config: pytest.Config) -> Path:
    xmlpath = getattr(config.option, "xmlpath", None)
    if xmlpath:
        return Path(xmlpath).resolve().parent
    return config.invocation_params.dir / "reports"


def _junit_properties(config: pytest.Config, properties: list[tuple[str, str]]) -> None:
    # LogXML (--junitxml) is registered anonymously; find it by its public method. Under xdist
    # record_testsuite_property does not reach the controller, so the controller adds them.
    for plugin in config.pluginmanager.get_plugins():
        add = getattr(plugin, "add_global_property", None)
        if callable(add):
            for name, value in properties:
                add(name, value)
