"""How a user asks for the suite (conformance/kit/run/invocation.py, README "Install"): the cluster
options or ``--netconform`` with no test paths run the installed suite with IDs
``conformance/test_*.py::...`` and the working directory as rootdir, both spellings of
``--kubeconfig``; test paths are honoured as given; a run that collects nothing says how to
ask. Runs the plugin in-process with pytester against a faked discovery (no cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conformance.plugin as plugin
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.run import invocation as selection

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")

OPTIONS = ("--kubeconfig", "--context")
SUITE_MODULES = sorted(p.name for p in selection.SUITE_DIR.glob("test_*.py"))


# --- the pure parts ----------------------------------------------------------------------------


def test_join_option_values_writes_our_options_in_one_word() -> None:
    args = ["-q", "--kubeconfig", "/k", "--context", "c", "tests", "--", "--kubeconfig", "x"]
    assert selection.join_option_values(args, OPTIONS) == [
        "-q",
        "--kubeconfig=/k",
        "--context=c",
        "tests",
        "--",
        "--kubeconfig",
        "x",
    ]


def test_only_values_naming_existing_paths_mislead_the_rootdir(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("{}")
    args = ["--kubeconfig", "kubeconfig", "--context", "kind-x", "--kubeconfig=elsewhere"]
    assert selection.misleading_values(args, OPTIONS, cwd=tmp_path) == ["kubeconfig"]
    assert selection.misleading_values(["--kubeconfig=kubeconfig"], OPTIONS, cwd=tmp_path) == []


def test_rerun_joins_the_command_line_and_addopts_once(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("{}")
    plan = selection.rerun_args(
        ["--kubeconfig", str(kubeconfig), "-q"],
        {"PYTEST_ADDOPTS": f"--context ctx --kubeconfig {kubeconfig}"},
        OPTIONS,
    )
    assert plan is not None
    assert plan.args[:2] == (f"--kubeconfig={kubeconfig}", "-q")
    assert plan.args[2:] == selection.ALREADY_IMPORTED_FILTER
    assert plan.addopts == f"--context=ctx --kubeconfig={kubeconfig}"
    # The second run never starts a third, and a right run is left alone.
    assert selection.rerun_args(plan.args, {selection.RERUN_ENV: "1"}, OPTIONS) is None
    assert selection.rerun_args([f"--kubeconfig={kubeconfig}"], {}, OPTIONS) is None


def test_every_value_option_of_the_plugin_is_joined(pytestconfig: pytest.Config) -> None:
    # A value option missing from VALUE_OPTIONS would misroot runs that write it in two words.
    group = next(g for g in pytestconfig._parser._groups if g.name == "netconform")
    with_values = {
        name
        for option in group.options
        # (argparse's action: store_true takes no value, nargs 0)
        if option.attrs().get("nargs") != 0
        and option.attrs().get("action") not in ("store_true", "store_false")
        for name in option.names()
    }
    assert with_values == set(plugin.VALUE_OPTIONS)


def test_hints_name_the_way_to_ask() -> None:
    assert "pytest --kubeconfig PATH" in selection.nothing_collected_hint(
        asked=None, paths_given=False
    )
    with_paths = selection.nothing_collected_hint(asked="--kubeconfig", paths_given=True)
    assert "--kubeconfig was given with test paths" in with_paths
    assert "deselected" in selection.nothing_collected_hint(asked="--netconform", paths_given=False)


# --- the rule, in pytest --------------------------------------------------------------------


@pytest.fixture
def healthy_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(nodes=("node-1", "node-2"), family_plan=FamilyPlan(tested=(4,))),
    )


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    """A project of its own (one test) with an ini file, and a kubeconfig outside it."""
    pytester.makeini("[pytest]\nmarkers =\n    own: the project's own marker\n")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    kubeconfig = pytester.path.parent / f"{pytester.path.name}-cluster" / "kubeconfig"
    kubeconfig.parent.mkdir()
    kubeconfig.write_text("{}")
    return kubeconfig


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line and not line.startswith(" ")]


@pytest.mark.usefixtures("healthy_discovery")
@pytest.mark.parametrize("spelling", ["space", "equals"])
def test_kubeconfig_without_paths_runs_the_installed_suite(
    pytester: pytest.Pytester, project: Path, spelling: str
) -> None:
    option = ["--kubeconfig", str(project)] if spelling == "space" else [f"--kubeconfig={project}"]
    result = pytester.runpytest(*option, "--collect-only", "-q", "-p", "no:cacheprovider")
    ids = collected(result)
    assert result.ret == 0, result.stdout.str()
    modules = sorted({test_id.split("::")[0] for test_id in ids})
    assert modules == [f"conformance/{name}" for name in SUITE_MODULES]
    assert not any("test_own" in test_id for test_id in ids)
    header = pytester.runpytest(*option, "--collect-only", "-p", "no:cacheprovider")
    # The project's folder and ini file, not the kubeconfig's folder.
    header.stdout.fnmatch_lines([f"rootdir: {pytester.path}", "configfile: tox.ini"])


@pytest.mark.usefixtures("healthy_discovery")
def test_netconform_flag_asks_for_the_suite(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest("--netconform", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert any(re.match(r"conformance/test_localhost\.py::", line) for line in collected(result))


def test_test_paths_are_run_as_given(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest(
        "--kubeconfig", str(project), "test_own.py", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


def test_own_tests_never_see_the_suite(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
    assert "netconform:" not in result.stdout.str()


def test_nothing_collected_says_how_to_ask(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["netconform: the suite was not asked for. pytest --kubeconfig*"])


def test_paths_without_tests_say_the_suite_was_not_added(
    pytester: pytest.Pytester, project: Path
) -> None:
    empty = pytester.mkdir("empty")
    result = pytester.runpytest("--kubeconfig", str(project), str(empty), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["netconform: --kubeconfig was given with test paths*"])
