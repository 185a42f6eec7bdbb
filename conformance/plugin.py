"""pytest hooks of k8s-netconform: options, markers, parametrization from the discovered nodes,
and report hooks. The work lives in ``conformance.kit`` (the run's session in
`conformance.kit.run.session`); fixtures live in ``conformance/conftest.py``.

Nothing here touches a cluster unless a conformance test is collected: nodes are discovered in
``pytest_generate_tests`` of a conformance test, probes are deployed by the first test that
needs them, and the namespace is deleted at the end only if a deployment started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.base.runstate import RunInfo, once_data
from conformance.kit.base.settings import (
    ALLOWABLE_EXCLUSIONS,
    DEFAULT_EDGE_PORT,
    DEFAULT_MAX_LOSS,
    DEFAULT_PROBE_IMAGE,
    DEFAULT_RUN_LEASE,
    IMAGE_PULL_POLICIES,
    IP_FAMILIES,
    Settings,
    parse_allow_excluded,
    parse_exclude_node,
    parse_external_host,
    parse_image_pull_policy,
    parse_ip_family,
    parse_max_loss,
    parse_max_nodes,
    parse_node_selector,
    parse_pairs,
    parse_pairs_seed,
    parse_probe_image,
    parse_probe_timeout,
    parse_pull_secret,
    parse_run_lease,
    parse_taint_toleration,
)
from conformance.kit.cluster.api import describe_api_error
from conformance.kit.cluster.discovery import DISCOVERY_RECORD, Discovery, discover
from conformance.kit.cluster.namespace import namespace_name, new_run_id
from conformance.kit.cluster.pairs import AUTO_SAMPLE_ABOVE, AUTO_SAMPLE_SIZE, PairPlan
from conformance.kit.probes.podspecs import images_to_pull
from conformance.kit.run.cases import (
    PAIRS_ALL,
    item_place,
    pair_plan,
    place_attribute,
    plan_cases,
)
from conformance.kit.run.invocation import (
    SUITE_DIR,
    given_plugins,
    nothing_collected_hint,
    rerun,
    rerun_args,
    suite_module_id,
)
from conformance.kit.run.session import (
    DISCOVERY_KEY,
    RULE_PROPERTY,
    RUN_KEY,
    SETTINGS_KEY,
    WORKERINPUT_KEY,
    ExitGate,
    LeaseRenewer,
    RunReporter,
    XdistController,
    is_worker,
    recorded_discovery,
)
from conformance.kit.verdicts.failures import (
    ACCOUNTS_FOR_PROPERTY,
    FAILURE_ATTRIBUTE,
    UNTESTED_PROPERTY,
    RuleBroken,
    RuleFailure,
    could_not_test_text,
    rule_from_docstring,
)

#: Errors that leave a check without a verdict on the network: the suite's own `CouldNotTest`
#: and an API call the cluster refused or dropped outside the kit's retries.
UNTESTED_ERRORS = (CouldNotTest, ApiException, urllib3.exceptions.HTTPError)
PARAM_FIXTURES = ("proto", "family", "probe_node", "node_pair", "cluster_node")
#: Whether the user named test paths (decided before the suite may replace them).
PATHS_GIVEN_KEY = pytest.StashKey[bool]()

#: Options that ask for the suite (by dest), and how the user wrote them.
SUITE_REQUESTS = (
    ("netconform_requested", "--netconform"),
    ("netconform_kubeconfig", "--kubeconfig"),
    ("netconform_context", "--context"),
)
#: Our options that take a value: written as two words, pytest's early rootdir search takes
#: the value for a test path (see `conformance.kit.run.invocation`).
VALUE_OPTIONS = (
    "--kubeconfig",
    "--context",
    "--probe-image",
    "--image-pull-policy",
    "--node-selector",
    "--max-nodes",
    "--exclude-node",
    "--allow-excluded",
    "--tolerate-taint",
    "--image-pull-secret",
    "--probe-timeout",
    "--ip-family",
    "--pairs",
    "--pairs-seed",
    "--run-lease",
    "--external-host",
    "--max-loss",
)

MARKERS = (
    "netconform: a k8s-netconform conformance check (added automatically)",
    "node_cidr: the pod-IP-inside-its-node's-podCIDR check; deselect it with "
    '-m "not node_cidr" where the IPAM ignores node podCIDRs',
    "multinode: needs at least two selected nodes; skipped otherwise",
    "disruptive: kills a probe container (the sandbox pod only)",
    "swept_by(planner): the check's exchanges come from the run's reachability sweep; "
    "planner(params, probe_map) gives one item's targets",
    "prefetched_by(planner): the check's agent requests come from the run's prefetch; "
    "planner(params, probe_map, nonce) gives one item's steps",
    "netpol: the NetworkPolicy family (conformance/test_network_policy.py); "
    '-m "not netpol" leaves it out',
    "edge_planned_by(planner): the check's exchanges come from the run's edge pass (traffic "
    "with the --external-host); planner(params, probe_map, host) gives one item's targets",
)


# --- options ---------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netconform", "k8s-netconform: Kubernetes network model conformance")
    group.addoption(
        "--netconform",
        dest="netconform_requested",
        action="store_true",
        default=False,
        help="run the k8s-netconform suite from the installed package (implied by --kubeconfig "
        "or --context when no test paths are given); test paths, when given, are run instead",
    )
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
        "--exclude-node",
        dest="netconform_exclude_nodes",
        action="append",
        default=None,
        type=parse_exclude_node,
        metavar="NAME",
        help="leave node NAME out of the run (your narrowing: it does not make the run exit 2); "
        "repeatable",
    )
    group.addoption(
        "--allow-excluded",
        dest="netconform_allow_excluded",
        action="append",
        default=None,
        type=parse_allow_excluded,
        metavar="KIND[,KIND...]",
        help=f"kinds of nodes that may be left out without making the run exit 2: "
        f"{', '.join(ALLOWABLE_EXCLUSIONS)}; cordoned and noschedule nodes, tested by default "
        "(probes pinned by nodeName run there), are then left out",
    )
    group.addoption(
        "--include-control-plane",
        dest="netconform_include_control_plane",
        action="store_true",
        default=False,
        help="also probe control-plane nodes: the probes tolerate the control-plane taints "
        "(without it, tainted control-plane nodes are left out as your narrowing)",
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
        "--require-network-policy",
        dest="netconform_require_network_policy",
        action="store_true",
        default=False,
        help="a cluster that enforces no NetworkPolicy fails the run (exit 1); by default it "
        "gets the one verdict 'NetworkPolicy not enforced by this cluster' and exits 0",
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
        help="first delete the suite's namespaces whose run is gone (its lease expired), saying "
        "why each other one was kept, then test",
    )
    group.addoption(
        "--run-lease",
        dest="netconform_run_lease",
        default=DEFAULT_RUN_LEASE,
        type=parse_run_lease,
        metavar="SECONDS",
        help="how long the run namespace's lease lasts unless renewed; the run renews it every "
        f"fifth of that, and --cleanup-stale in other runs keeps it until it expires (default: "
        f"{DEFAULT_RUN_LEASE:.0f})",
    )
    # pytest owns --strict (its strict mode), hence the longer name.
    group.addoption(
        "--strict-reachability",
        dest="netconform_strict",
        action="store_true",
        default=False,
        help="an exchange that answers only on a retry fails its check (default: it passes "
        "and is reported as flaky), and so does one that lost any probe (--max-loss 0)",
    )
    group.addoption(
        "--max-loss",
        dest="netconform_max_loss",
        default=DEFAULT_MAX_LOSS,
        type=parse_max_loss,
        metavar="PERCENT",
        help="an exchange losing more than this share of its probes fails its check; one "
        f"losing less passes, reported as lossy (default: {DEFAULT_MAX_LOSS:g})",
    )
    group.addoption(
        "--pairs",
        dest="netconform_pairs",
        default="auto",
        type=parse_pairs,
        metavar="all|auto|sample:K",
        help=f"cross-node pairs to check: all, or sample:K (K random pairs per node as source "
        f"and as destination); auto (default) checks all up to {AUTO_SAMPLE_ABOVE} nodes and "
        f"samples {AUTO_SAMPLE_SIZE} per node above",
    )
    group.addoption(
        "--external-host",
        dest="netconform_external_hosts",
        action="append",
        default=None,
        type=parse_external_host,
        metavar="ADDR[:PORT]",
        help="a host outside the cluster running the edge server (agent.py serve "
        "--edge-control; the edge checks' skip reason prints the command): pods must reach it, "
        f"and it must reach every node's NodePort. TCP and UDP on PORT (default "
        f"{DEFAULT_EDGE_PORT}), its control on TCP PORT+1. ADDR: an IPv4 or IPv6 address "
        "([IPv6]:PORT) or a name the pods resolve; repeat it for the host's address of the other "
        "family. Without it the edge checks skip",
    )
    group.addoption(
        "--pairs-seed",
        dest="netconform_pairs_seed",
        default=None,
        type=parse_pairs_seed,
        metavar="N",
        help="seed of a sampled run's pair choice (default: random, printed and recorded); "
        "pass a run's seed to replay its pairs",
    )


# --- invocation: rerun when misrooted, --list-images --------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """Before anything is configured: run pytest again when an option value written as a
    separate word misled its rootdir search (`conformance.kit.run.invocation`); then
    ``--list-images``: print the images, one per line and nothing else, and stop before any
    session (so before any cluster access)."""
    if not is_worker(config) and not (config.option.help or config.option.version):
        plan = rerun_args(config.invocation_params.args, os.environ, VALUE_OPTIONS)
        if plan is not None:
            return rerun(plan, given_plugins(config.pluginmanager))
    if not config.getoption("netconform_list_images", False) or config.option.help:
        return None
    for image in images_to_pull(Settings.from_config(config)):
        sys.stdout.write(image + "\n")
    sys.stdout.flush()
    return int(pytest.ExitCode.OK)


# --- configuration ---------------------------------------------------------------------------


def suite_asked_by(config: pytest.Config) -> str | None:
    """The option that asked for the suite (``--netconform``, or our ``--kubeconfig`` /
    ``--context``), None when none did."""
    for dest, option in SUITE_REQUESTS:
        if config.getoption(dest, None):
            return option
    return None


def paths_were_given(config: pytest.Config) -> bool:
    """The user named test paths (or ``--pyargs`` modules): they are collected as given."""
    given = config.stash.get(PATHS_GIVEN_KEY, None)
    return bool(config.args_source == pytest.Config.ArgsSource.ARGS) if given is None else given


def pytest_configure(config: pytest.Config) -> None:
    config.stash[PATHS_GIVEN_KEY] = paths_were_given(config)
    if suite_asked_by(config) and not config.stash[PATHS_GIVEN_KEY]:
        # Asked for, no paths: the installed suite instead of testpaths or the working dir.
        config.args = [str(SUITE_DIR)]
        config.args_source = pytest.Config.ArgsSource.ARGS
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash[SETTINGS_KEY] = Settings.from_config(config)
    if is_worker(config):
        workerinput: dict[str, Any] = getattr(config, "workerinput")  # noqa: B009
        config.stash[RUN_KEY] = RunInfo.from_dict(workerinput[WORKERINPUT_KEY])
        return
    # Names only: nothing is created in the cluster until a test needs probes.
    run_id = new_run_id()
    settings = config.stash[SETTINGS_KEY]
    run = RunInfo(
        run_id=run_id,
        namespace=namespace_name(run_id),
        shared_dir=tempfile.mkdtemp(prefix="netconform-"),
        pairs_seed=settings.pairs_seed
        if settings.pairs_seed is not None
        else secrets.randbelow(2**31),  # not a secret: a replayable choice, printed
    )
    config.stash[RUN_KEY] = run
    lease = LeaseRenewer(config, run)
    config.pluginmanager.register(lease, "netconform-lease")
    gate = ExitGate(run)
    config.pluginmanager.register(
        RunReporter(config, run, lease.keeper, gate), "netconform-reporter"
    )
    config.pluginmanager.register(gate, "netconform-exit-gate")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(run), "netconform-xdist-controller")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and not is_worker(config):
        shutil.rmtree(run.shared_dir, ignore_errors=True)


# --- collection ------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    """The suite's modules are ``conformance/test_*.py`` in test IDs wherever the package is
    installed (site-packages, a project's .venv), as in a checkout."""
    module_id = suite_module_id(module_path)
    if module_id is None:
        return None
    module: pytest.Module = pytest.Module.from_parent(parent, path=module_path, nodeid=module_id)
    return module


def _is_conformance_module(module: Any) -> bool:
    name = getattr(module, "__name__", "")
    return bool(name.startswith("conformance.test_") or name.startswith("test_")) and (
        Path(getattr(module, "__file__", "") or "").parent == Path(__file__).parent
    )


def discovery_for(config: pytest.Config) -> Discovery:
    """Nodes and IP families of the cluster: read once in the whole run (the first process to
    collect a conformance check; xdist workers read it back, so they parametrize alike)."""
    found = config.stash.get(DISCOVERY_KEY, None)
    if found is None:
        found = once_data(
            config.stash[RUN_KEY],
            DISCOVERY_RECORD,
            lambda: discover(config.stash[SETTINGS_KEY]),
            Discovery,
            CouldNotTest,
        )
        config.stash[DISCOVERY_KEY] = found
    return found


def pair_plan_for(config: pytest.Config, discovery: Discovery) -> PairPlan:
    """The run's choice of cross-node pairs (the same in every process of the run)."""
    return pair_plan(
        config.stash[SETTINGS_KEY].pairs, len(discovery.nodes), config.stash[RUN_KEY].pairs_seed
    )


@pytest.hookimpl(trylast=True)  # after @pytest.mark.parametrize: the place ends the test ID
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [n for n in PARAM_FIXTURES if n in metafunc.fixturenames]
    if not wanted or not _is_conformance_module(metafunc.module):
        return
    discovery = discovery_for(metafunc.config)
    if discovery.usage_error is not None:
        return  # nothing of the suite runs (see pytest_collection_modifyitems)
    api_only = wanted == ["cluster_node"] and bool(discovery.checked)
    if discovery.error is not None and not api_only:
        # One placeholder case: the test errors in setup with the cause (never passes).
        metafunc.parametrize(
            wanted, [pytest.param(*([None] * len(wanted)), id="cluster-unavailable")]
        )
        return
    params = [
        pytest.param(*(values[n] for n in wanted), id=ident or "all")
        for values, ident in plan_cases(
            set(metafunc.fixturenames),
            place_attribute(metafunc.function, metafunc.module, "PROTOCOLS", None),
            discovery,
            pair_plan_for(metafunc.config, discovery),
            place_attribute(metafunc.function, metafunc.module, "PAIRS", PAIRS_ALL),
        )
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
    found = config.stash.get(DISCOVERY_KEY, None)
    if found is not None and found.usage_error is not None:
        if not is_worker(config):
            raise pytest.UsageError(found.usage_error)
        # An xdist worker cannot stop the run with a usage error; it runs nothing of the suite
        # and the controller's exit gate ends the run with pytest's usage-error code.
        suite = [item for item in items if _is_conformance_module(getattr(item, "module", None))]
        config.hook.pytest_deselected(items=suite)
        items[:] = [item for item in items if item not in suite]
        return
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not _is_conformance_module(module):
            continue
        item.add_marker(pytest.mark.netconform)
        item.user_properties.append((RULE_PROPERTY, rule_of(item)))
        callspec = getattr(item, "callspec", None)
        item.user_properties.extend(
            item_place(
                getattr(item, "originalname", item.name),
                dict(callspec.params) if callspec is not None else {},
                place_attribute(getattr(item, "obj", None), module, "SOURCE_KIND", "pod"),
            ).properties()
        )
        accounts_for = place_attribute(getattr(item, "obj", None), module, "ACCOUNTS_FOR", ())
        if accounts_for:
            item.user_properties.append((ACCOUNTS_FOR_PROPERTY, ",".join(accounts_for)))


# --- reports ---------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A run whose options the cluster proved wrong (xdist workers could not stop it) says
    why; a run that collected nothing says how to ask for the suite."""
    if is_worker(config):
        return
    found = recorded_discovery(config.stash[RUN_KEY])
    if found is not None and found.usage_error is not None:
        terminalreporter.write_line(f"ERROR: {found.usage_error}", red=True)
        return
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        terminalreporter.write_line(
            nothing_collected_hint(
                asked=suite_asked_by(config), paths_given=paths_were_given(config)
            )
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if item.get_closest_marker("netconform") is None:
        return report
    excinfo = call.excinfo
    if report.failed and excinfo is not None and excinfo.errisinstance(UNTESTED_ERRORS):
        # The probes or the API could not be asked: no verdict on the network. Reported as an
        # error, like a failed fixture, never as a broken rule; the text comes from the type.
        error = excinfo.value
        cause = str(error) if isinstance(error, CouldNotTest) else describe_api_error(error)
        if report.when == "call":
            report.when = "setup"
        report.longrepr = could_not_test_text(cause)
        report.user_properties.append((UNTESTED_PROPERTY, type(error).__name__))
        untested = RuleFailure(rule=rule_of(item), observed=could_not_test_text(cause))
        setattr(report, FAILURE_ATTRIBUTE, untested.to_dict())
    elif report.failed and excinfo is not None and isinstance(excinfo.value, RuleBroken):
        # The judge's verdict as data, on the report: plain JSON, so that it travels from an
        # xdist worker with the report, and every output is drawn from it.
        setattr(report, FAILURE_ATTRIBUTE, excinfo.value.failure.to_dict())
    if report.when == "call" or (report.when == "setup" and not report.passed):
        report.sections.append(("rule", rule_of(item)))
    # The run's pod states and events appear once per report (RunReporter), not per failure.
    return report
