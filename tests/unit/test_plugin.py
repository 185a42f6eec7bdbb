"""The netconform pytest plugin, run inside pytester: options, the shared --kubeconfig, no
cluster access unless a conformance test is collected, and an unreachable cluster reported as
errors (never passes)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

import conformance.plugin as plugin
from conformance.kit.base.settings import DEFAULT_PROBE_IMAGE, Timeouts
from conformance.kit.cluster.nodes import WINDOWS, Exclusion
from conformance.kit.run import session

pytest_plugins = ["pytester"]


pytestmark = pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")


@pytest.fixture
def fast_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on an unreachable API server in about a second (in-process runs only)."""

    def fast(cls: type[Timeouts], probe_timeout: float) -> Timeouts:
        return cls(probe=probe_timeout, discovery=1.0, api_retry=1.0, api_request=2.0)

    monkeypatch.setattr(Timeouts, "for_probe_timeout", classmethod(fast))


def unreachable_kubeconfig(path: Path) -> Path:
    """A kubeconfig whose API server refuses connections (port 1 on localhost)."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "nobody", "user": {"token": "not-a-token"}}],
                "contexts": [
                    {"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}
                ],
                "current-context": "nowhere",
            }
        )
    )
    return path


SETTINGS_PROBE = """
from conformance.kit.run.session import SETTINGS_KEY

def test_settings(pytestconfig):
    s = pytestconfig.stash[SETTINGS_KEY]
    print("SETTINGS", repr(s))
    assert s.max_nodes == {max_nodes!r}
    assert dict(s.node_selector) == {selector!r}
    assert s.image_pull_policy == {policy!r}
    assert s.ip_family == {family!r}
    assert s.probe_timeout == {timeout!r}
    assert s.timeouts.probe == {timeout!r}
    assert s.kubeconfig == {kubeconfig!r}
    assert s.keep_namespace is {keep!r}
"""


def test_help_lists_every_option_in_one_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    assert "k8s-netconform" in text
    for option in (
        "--kubeconfig",
        "--context",
        "--probe-image",
        "--image-pull-policy",
        "--node-selector",
        "--max-nodes",
        "--include-control-plane",
        "--probe-timeout",
        "--keep-namespace",
        "--ip-family",
        "--cleanup-stale",
        "--tolerate-taint",
        "--image-pull-secret",
        "--list-images",
        "--strict-reachability",
        "--exclude-node",
        "--allow-excluded",
    ):
        assert option in text, option


def test_options_parse(pytester: pytest.Pytester) -> None:
    probe = pytester.makepyfile(
        SETTINGS_PROBE.format(
            max_nodes=3,
            selector={"pool": "a", "example.com/zone": "z1"},
            policy="Always",
            family="ipv6",
            timeout=2.5,
            kubeconfig="/some/kubeconfig",
            keep=True,
        )
    )
    result = pytester.runpytest(
        "--max-nodes=3",
        "--node-selector=pool=a, example.com/zone=z1",
        "--image-pull-policy=always",
        "--ip-family=IPv6",
        "--probe-timeout=2.5",
        "--kubeconfig=/some/kubeconfig",
        "--keep-namespace",
        str(probe),  # with no test path, --kubeconfig would run the suite instead
    )
    result.assert_outcomes(passed=1)


def test_kubeconfig_falls_back_to_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/from/env")
    pytester.makepyfile(
        SETTINGS_PROBE.format(
            max_nodes=None,
            selector={},
            policy="IfNotPresent",
            family="auto",
            timeout=5.0,
            kubeconfig="/from/env",
            keep=False,
        )
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("argument", "complaint"),
    [
        ("--max-nodes=0", "--max-nodes: must be at least 1"),
        ("--max-nodes=many", "--max-nodes: 'many' is not a whole number"),
        ("--image-pull-policy=Sometimes", "--image-pull-policy: 'Sometimes' is not one of"),
        ("--ip-family=ipv5", "--ip-family: 'ipv5' is not one of"),
        ("--node-selector=pool", "--node-selector: 'pool' is not a label match"),
        ("--node-selector=a=b,a=c", "--node-selector: key 'a' given twice"),
        ("--probe-timeout=-1", "--probe-timeout: must be in (0, 300]"),
        ("--probe-timeout=soon", "--probe-timeout: 'soon' is not a number"),
        ("--probe-image=", "--probe-image: '' is not an image reference"),
        ("--tolerate-taint=gpu:Sometimes", "--tolerate-taint: effect 'Sometimes' is not one of"),
        ("--image-pull-secret=Bad_Name", "--image-pull-secret: 'Bad_Name' is not a Secret"),
        ("--exclude-node=Bad_Name", "--exclude-node: 'Bad_Name' is not a node name"),
        ("--allow-excluded=cordoned,sometimes", "--allow-excluded: sometimes is not one of"),
    ],
)
def test_bad_option_values_are_usage_errors(
    pytester: pytest.Pytester, argument: str, complaint: str
) -> None:
    pytester.makepyfile("def test_never(): pass")
    result = pytester.runpytest(argument)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert complaint in result.stderr.str()


def test_kubeconfig_option_shared_with_another_plugin(pytester: pytest.Pytester) -> None:
    # Registered before netconform (a -p plugin loads before entry-point plugins), like
    # pytest-helm-charts or pytest-kind would be.
    pytester.makepyfile(
        otherplugin="""
def pytest_addoption(parser):
    parser.getgroup("other").addoption("--kubeconfig", dest="kube_config", default=None)
"""
    )
    pytester.syspathinsert()
    pytester.makepyfile(
        test_shared="""
from conformance.kit.run.session import SETTINGS_KEY

def test_shared(pytestconfig):
    assert pytestconfig.getoption("kube_config") == "/shared/kubeconfig"
    assert pytestconfig.stash[SETTINGS_KEY].kubeconfig == "/shared/kubeconfig"
"""
    )
    result = pytester.runpytest("-p", "otherplugin", "--kubeconfig", "/shared/kubeconfig")
    result.assert_outcomes(passed=1)


def test_no_cluster_access_without_conformance_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    touched: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        touched.append("discover")
        raise AssertionError("the cluster must not be touched")

    monkeypatch.setattr(plugin, "discover", forbidden)
    plain = pytester.makepyfile("def test_plain(): pass")
    # With a test path the suite is not added (without one, --kubeconfig asks for it).
    result = pytester.runpytest(
        "--kubeconfig", str(unreachable_kubeconfig(tmp_path / "kubeconfig")), str(plain)
    )
    result.assert_outcomes(passed=1)
    assert touched == []
    assert not (pytester.path / "reports").exists()
    assert "netconform" not in result.stdout.str().split("passed")[-1]


def run_conformance(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the real conformance suites (by package) from pytester's directory."""
    return pytester.runpytest(
        "--pyargs",
        "conformance.test_no_snat",
        "conformance.test_pod_ips",
        "-p",
        "no:cacheprovider",
        *args,
    )


@pytest.mark.usefixtures("fast_timeouts")
def test_unreachable_cluster_is_errors_not_passes(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig")
    junit = pytester.path / "out" / "junit.xml"
    result = run_conformance(pytester, "--kubeconfig", str(kubeconfig), f"--junitxml={junit}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) >= 2
    assert "passed" not in outcomes
    assert "failed" not in outcomes
    result.stdout.fnmatch_lines(["*COULD NOT TEST: cannot read the cluster*127.0.0.1*"])
    summary = json.loads((junit.parent / "summary.json").read_text())
    assert summary["totals"]["error"] == summary["totals"]["total"] > 0
    assert summary["totals"]["passed"] == 0
    assert all(test["rule"] for test in summary["tests"])
    xml = junit.read_text()
    assert 'name="netconform.run_id"' in xml
    assert 'name="netconform.deployment" value="not started"' in xml
    assert 'name="rule"' in xml


def test_missing_kubeconfig_is_errors_under_xdist(pytester: pytest.Pytester) -> None:
    result = run_conformance(pytester, "-n", "2", "--kubeconfig", "/nonexistent/kubeconfig")
    assert result.ret == session.EXIT_COULD_NOT_TEST
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) >= 2
    assert "passed" not in outcomes
    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    assert summary["totals"]["error"] == summary["totals"]["total"] > 0
    # The cause came from the workers as data on their reports, not read from the text.
    for test in summary["tests"]:
        assert test["failure"]["expected"] is None, test
        assert test["failure"]["rule"] == test["rule"]
        assert test["failure"]["observed"].startswith("COULD NOT TEST: "), test
        # (xdist puts "[gw0] linux -- Python ..." before a worker's text: a report that read
        # the cause back from the message's first line would show that line instead.)
        assert test["message"].startswith("[setup] [gw"), test
        assert test["message"].endswith(test["failure"]["observed"]), test


def test_conformance_test_ids_and_rule_docstrings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.kit.cluster.discovery import Discovery
    from conformance.kit.cluster.families import FamilyPlan

    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(nodes=("node-1", "node-2"), family_plan=FamilyPlan(tested=(4,))),
    )
    result = pytester.runpytest(
        "--pyargs",
        "conformance",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
    )
    ids = result.stdout.str()
    for expected in (
        "test_no_snat[udp-node-1->node-2]",
        "test_no_snat[tcp-node-1->node-1]",
        "test_no_snat[icmp-node-2->node-1]",
        "test_node_to_pod[tcp-node-2]",
        "test_localhost_between_containers[udp-node-1]",  # the cluster's families only
        "test_localhost_between_containers[tcp-node-2]",
        "test_volume_shared_between_containers[memory-b->a-node-1]",
        "test_pod_ip_is_interface_address[node-2]",
    ):
        assert expected in ids, expected
    snat_ids = [line for line in ids.splitlines() if "test_no_snat[" in line]
    assert len(snat_ids) == 3 * (2 + 2)  # both ordered pairs and each node with itself, 3 protos
    assert not [i for i in snat_ids if "ipv4" in i]  # one family: kept out of the IDs


def test_dual_stack_ids_carry_the_family(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.kit.cluster.discovery import Discovery
    from conformance.kit.cluster.families import FamilyPlan

    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(
            nodes=("node-1", "node-2"), family_plan=FamilyPlan(tested=(4, 6))
        ),
    )
    result = pytester.runpytest(
        "--pyargs", "conformance.test_no_snat", "--collect-only", "-q", "-p", "no:cacheprovider"
    )
    ids = result.stdout.str()
    assert "test_no_snat[ipv6-udp-node-1->node-2]" in ids
    assert "test_no_snat[ipv4-icmp-node-2->node-1]" in ids


def test_single_node_skips_cross_node_pairs_only(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.kit.cluster.discovery import Discovery
    from conformance.kit.cluster.families import FamilyPlan

    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(nodes=("solo",), family_plan=FamilyPlan(tested=(4,))),
    )
    result = pytester.runpytest(
        "--pyargs", "conformance.test_no_snat", "--collect-only", "-q", "-p", "no:cacheprovider"
    )
    ids = result.stdout.str()
    assert "test_no_snat[tcp-solo->solo]" in ids
    assert "->" not in ids.replace("solo->solo", "")


def test_markers_are_registered_with_their_meaning(pytester: pytest.Pytester) -> None:
    assert session.RULE_PROPERTY == "rule"
    assert all(":" in marker for marker in plugin.MARKERS)
    markers = pytester.runpytest("--markers").stdout.str()
    for name in ("netconform", "swept_by(planner)", "prefetched_by(planner)"):
        assert f"@pytest.mark.{name}:" in markers, name


# --- issue 8: tolerations, pull secrets, --list-images, node_cidr, exclusions, exit codes ------


def test_repeatable_options_reach_the_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
from conformance.kit.run.session import SETTINGS_KEY
from conformance.kit.base.settings import PullSecret, TaintToleration

def test_settings(pytestconfig):
    s = pytestconfig.stash[SETTINGS_KEY]
    assert s.tolerate_taints == (
        TaintToleration("example.com/gpu", "NoSchedule"), TaintToleration("dedicated")
    )
    assert s.image_pull_secrets == (PullSecret("regcred"), PullSecret("mirror", "infra"))
    assert [str(t) for t in s.tolerations][:2] == ["example.com/gpu:NoSchedule", "dedicated"]
    assert s.exclude_nodes == ("node-3", "node-4")
    assert s.allow_excluded == ("windows", "cordoned", "not-ready")
"""
    )
    result = pytester.runpytest(
        "--exclude-node=node-3",
        "--exclude-node",
        "node-4",
        "--exclude-node=node-3",
        "--allow-excluded=Windows,cordoned",
        "--allow-excluded=not-ready,windows",
        "--tolerate-taint=example.com/gpu:noschedule",
        "--tolerate-taint",
        "dedicated",
        "--image-pull-secret=regcred",
        "--image-pull-secret=infra/mirror",
        "--include-control-plane",
    )
    result.assert_outcomes(passed=1)


def test_clashing_pull_secrets_are_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_never(): pass")
    result = pytester.runpytest("--image-pull-secret=a/regcred", "--image-pull-secret=b/regcred")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "would both be copied as 'regcred'" in result.stderr.str()


def forbid_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any discovery or API client creation record itself and fail."""
    touched: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        touched.append("cluster")
        raise AssertionError("the cluster must not be touched")

    monkeypatch.setattr(plugin, "discover", forbidden)
    monkeypatch.setattr("conformance.kit.cluster.api.make_api_client", forbidden)
    return touched


@pytest.mark.parametrize("extra", [(), ("-n", "2")])
def test_list_images_prints_only_the_images(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: tuple[str]
) -> None:
    touched = forbid_cluster(monkeypatch)
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig")
    result = pytester.runpytest(
        "--pyargs", "conformance", "--kubeconfig", str(kubeconfig), "--list-images", *extra
    )
    assert result.ret == 0
    assert result.outlines == [DEFAULT_PROBE_IMAGE]
    mirrored = pytester.runpytest(
        "--list-images", "--probe-image=registry.example/netshoot:v0.13", *extra
    )
    assert mirrored.ret == 0
    assert mirrored.outlines == ["registry.example/netshoot:v0.13"]
    assert touched == []
    assert not (pytester.path / "reports").exists()


def test_node_cidr_marker_is_registered_and_deselects_one_check(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance.kit.cluster.discovery import Discovery

    monkeypatch.setattr(plugin, "discover", lambda settings: Discovery(nodes=("n1", "n2")))
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.node_cidr:" in markers
    args = ("--pyargs", "conformance.test_pod_ips", "--collect-only", "-q", "--strict-markers")
    everything = pytester.runpytest(*args, "-p", "no:cacheprovider").stdout.str()
    assert "test_pod_ips_inside_node_pod_cidrs" in everything
    gate = pytester.runpytest(*args, "-p", "no:cacheprovider", "-m", "not node_cidr")
    kept = gate.stdout.str()
    assert "test_pod_ips_inside_node_pod_cidrs" not in kept
    for still_runs in (
        "test_pod_ips_unique",
        "test_node_pod_cidrs_disjoint",
        "test_node_pod_cidrs_outside_service_range",
        "test_node_addresses_outside_pod_cidrs",
    ):
        assert still_runs in kept, still_runs
    gate.stdout.fnmatch_lines(["*1 deselected*"])


def fake_node(name: str, cidr: str, address: str) -> Any:
    from kubernetes import client

    return client.V1Node(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1NodeSpec(pod_cidr=cidr, pod_cidrs=[cidr]),
        status=client.V1NodeStatus(
            addresses=[client.V1NodeAddress(type="InternalIP", address=address)]
        ),
    )


WINDOWS_REASON = "OS is windows, not linux (the probes are Linux containers)"
HEALTHY_NODES = [
    fake_node("n1", "10.244.1.0/24", "172.18.0.2"),
    fake_node("n2", "10.244.2.0/24", "172.18.0.3"),
]
OVERLAPPING_NODES = [
    fake_node("n1", "10.244.0.0/16", "172.18.0.2"),
    fake_node("n2", "10.244.2.0/24", "10.244.3.5"),  # inside n1's range too
]
# Checks that need nothing but the node list (no probes, no other API call).
NODE_ONLY_CHECKS = "test_node_pod_cidrs_disjoint or test_node_addresses_outside_pod_cidrs"


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Discovery of two nodes (one more left out), a node list chosen per test, and a kubeconfig
    whose server (a closed port on 127.0.0.1) refuses everything else."""
    from conformance.kit.cluster.discovery import Discovery
    from conformance.kit.cluster.families import FamilyPlan

    # Through sys.modules: an earlier in-process run may have dropped the module from it
    # while the package attribute still points at the old copy.
    test_pod_ips = importlib.import_module("conformance.test_pod_ips")
    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(
            nodes=("n1", "n2"),
            excluded={
                "win-1": Exclusion(
                    WINDOWS, WINDOWS_REASON, narrowed=WINDOWS in settings.allow_excluded
                )
            },
            family_plan=FamilyPlan(tested=(4,)),
            checked=("n1", "n2", "win-1"),
        ),
    )

    def run(
        pytester: pytest.Pytester, nodes: list[Any], *args: str, **kwargs: Any
    ) -> pytest.RunResult:
        monkeypatch.setattr(test_pod_ips, "list_nodes", lambda core, timeouts: list(nodes))
        kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig")
        return pytester.runpytest(
            "--pyargs",
            "conformance.test_pod_ips",
            "-p",
            "no:cacheprovider",
            "--kubeconfig",
            str(kubeconfig),
            f"--junitxml={pytester.path / 'out' / 'junit.xml'}",
            *args,
            **kwargs,
        )

    return run


def summary_of(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "out" / "summary.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.usefixtures("fast_timeouts")
def test_exit_0_when_every_rule_holds(pytester: pytest.Pytester, fake_cluster: Any) -> None:
    result = fake_cluster(
        pytester, HEALTHY_NODES, "-k", NODE_ONLY_CHECKS, "--allow-excluded=windows"
    )
    # The node checks pass; the rest is deselected (the required-family check among them).
    result.assert_outcomes(passed=2, deselected=6)
    assert result.ret == session.EXIT_RULES_HOLD
    # Every left-out node is named once, in the terminal summary, the JUnit and the JSON.
    assert result.outlines.count(f"node win-1 left out: {WINDOWS_REASON} (narrowed: windows)") == 1
    xml = (pytester.path / "out" / "junit.xml").read_text()
    assert f'name="netconform.excluded.win-1" value="{WINDOWS_REASON}"' in xml
    summary = summary_of(pytester)
    assert summary["excluded_nodes"] == {"win-1": WINDOWS_REASON}
    assert summary["nodes"]["left_out"]["win-1"]["narrowed"] is True
    assert summary["nodes"]["unaccounted"] == []
    assert summary["exitstatus"] == 0
    # Held where checked: the verdict names the node narrowed away, never "every rule held".
    assert not summary["verdict"]["every_rule_held"]
    assert summary["verdict"]["not_checked"] == [f"node win-1 narrowed away ({WINDOWS_REASON})"]
    assert any(
        line.startswith("verdict: all 2 rules held where checked") for line in result.outlines
    )


@pytest.mark.usefixtures("fast_timeouts")
def test_exit_2_when_the_suite_left_a_node_out(
    pytester: pytest.Pytester, fake_cluster: Any
) -> None:
    result = fake_cluster(pytester, HEALTHY_NODES, "-k", NODE_ONLY_CHECKS)
    result.assert_outcomes(passed=2, deselected=6)
    assert result.ret == session.EXIT_COULD_NOT_TEST
    result.stdout.fnmatch_lines(
        [
            "could not test 1 node(s) the run was asked for, left out by the suite: win-1 (OS is "
            "windows*--allow-excluded windows* or --exclude-node win-1)"
        ]
    )
    summary = summary_of(pytester)
    assert summary["nodes"]["unaccounted"] == ["win-1"]
    assert summary["exitstatus"] == 2
    assert summary["verdict"]["not_checked"] == [f"node win-1 left out ({WINDOWS_REASON})"]


@pytest.mark.usefixtures("fast_timeouts")
def test_exit_1_when_a_rule_is_broken(pytester: pytest.Pytester, fake_cluster: Any) -> None:
    result = fake_cluster(
        pytester, OVERLAPPING_NODES, "-k", NODE_ONLY_CHECKS, "--allow-excluded=windows"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 2
    assert "errors" not in outcomes
    assert result.ret == session.EXIT_RULE_BROKEN
    assert summary_of(pytester)["exitstatus"] == 1


@pytest.mark.usefixtures("fast_timeouts")
def test_exit_2_wins_over_1(pytester: pytest.Pytester, fake_cluster: Any) -> None:
    # The node checks fail (broken rule); the uniqueness check needs probes, whose deployment
    # meets the closed port (could not test).
    result = fake_cluster(
        pytester, OVERLAPPING_NODES, "-k", f"{NODE_ONLY_CHECKS} or test_pod_ips_unique"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 2
    assert outcomes.get("errors") == 1
    result.stdout.fnmatch_lines(["*COULD NOT TEST: probe deployment*127.0.0.1*"])
    assert result.ret == session.EXIT_COULD_NOT_TEST
    assert summary_of(pytester)["exitstatus"] == 2


@pytest.mark.usefixtures("fast_timeouts")
def test_interrupt_keeps_pytest_code(
    pytester: pytest.Pytester, fake_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(nodes: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(
        importlib.import_module("conformance.test_pod_ips"),
        "find_overlapping_node_cidrs",
        interrupted,
    )
    # no_reraise_ctrlc: the inner Ctrl-C must not stop this outer run.
    result = fake_cluster(
        pytester, OVERLAPPING_NODES, "-k", NODE_ONLY_CHECKS, no_reraise_ctrlc=True
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert "failed" not in result.parseoutcomes()


def test_no_tests_collected_keeps_pytest_code(pytester: pytest.Pytester, fake_cluster: Any) -> None:
    result = fake_cluster(pytester, HEALTHY_NODES, "-k", "no_such_check")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.usefixtures("fast_timeouts")
def test_unreachable_cluster_exits_2(pytester: pytest.Pytester, tmp_path: Path) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig")
    result = run_conformance(pytester, "--kubeconfig", str(kubeconfig))
    assert result.ret == session.EXIT_COULD_NOT_TEST
    assert json.loads((pytester.path / "reports" / "summary.json").read_text())["exitstatus"] == 2
