"""`conformance.kit.base.errors`: one root for "could not test". Every error the kit raises when a
check cannot be made is a `CouldNotTest` defined in that one module, and the plugin reports
any of them, raised by a check, as an error (``COULD NOT TEST: ...``, exit 2), never as a
broken rule."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conformance.kit.base import errors
from conformance.kit.base.errors import CouldNotTest, ProbeCallError, ProbeExecError
from conformance.kit.run.session import EXIT_COULD_NOT_TEST

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

#: Exception classes the kit may define outside errors.py, and why they are not could-not-test.
NOT_COULD_NOT_TEST = {
    "CIDRParseError": "a CIDR text the cluster reports that does not parse (a finding)",
    "_StillFailing": "the sweep's private signal to tenacity for another round",
    "_WatchEnded": "a wait's private signal to tenacity to list and watch again",
}

ERROR_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if cls.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)


def test_the_issue_names_are_all_there() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} >= {
        "CouldNotTest",
        "ClusterError",
        "ProbeDeploymentError",
        "ProbeCallError",
        "ProbeExecError",
        "ProbeProtocolError",
        "SweepError",
        "PrefetchError",
    }


@pytest.mark.parametrize("error", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_could_not_test(error: type[Exception]) -> None:
    assert issubclass(error, CouldNotTest)
    assert error.__doc__, f"{error.__name__} says when it is raised"


def test_the_kit_defines_its_errors_in_one_module() -> None:
    elsewhere = {}
    for path in sorted((ROOT / "conformance" / "kit").glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
                for base in node.bases
            ):
                elsewhere[node.name] = path.name
    unexplained = {
        name: where for name, where in elsewhere.items() if name not in NOT_COULD_NOT_TEST
    }
    assert not unexplained, f"exceptions belong in conformance/kit/base/errors.py: {unexplained}"


def test_probe_call_errors_name_the_container_and_keep_the_stderr_tail() -> None:
    plain = ProbeCallError("agent call exited 3")
    assert str(plain) == "agent call exited 3"
    assert (plain.pod, plain.container, plain.stderr) == (None, None, "")
    stderr = "x" * 3000 + "the end\n"
    where = ProbeExecError("agent call exited 3", pod="probe-n1", container="a", stderr=stderr)
    text = str(where)
    assert text.startswith("agent call exited 3 [pod probe-n1, container a]\nstderr:\n")
    assert text.endswith("the end")
    assert len(text) < 2100  # the tail only
    assert where.stderr == stderr  # the whole of it stays on the object
    assert "container ?" in str(ProbeCallError("m", pod="p"))


CHECKS = """
import pytest
from conformance.kit.base import errors

COULD_NOT_TEST = sorted(
    name for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.CouldNotTest)
)


@pytest.fixture(autouse=True)
def rule(request):
    # What the plugin adds to a conformance check: its rule, which makes it count.
    request.node.user_properties.append(("rule", "pods MUST reach pods"))


@pytest.mark.netconform
@pytest.mark.parametrize("name", COULD_NOT_TEST)
def test_cannot_test(name):
    raise getattr(errors, name)(f"cause of {name}")


@pytest.mark.netconform
def test_rule_broken():
    pytest.fail("RULE BROKEN: pods MUST reach pods", pytrace=False)
"""


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_the_plugin_reports_every_could_not_test_as_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rfE")
    result.assert_outcomes(errors=len(ERROR_CLASSES), failed=1)
    assert result.ret == EXIT_COULD_NOT_TEST  # could-not-test wins over a broken rule
    for error in ERROR_CLASSES:
        result.stdout.fnmatch_lines([f"*COULD NOT TEST: cause of {error.__name__}*"])
    result.stdout.fnmatch_lines(["FAILED test_checks.py::test_rule_broken*"])


API_REFUSALS = """
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ProbeDeploymentError


@pytest.fixture(autouse=True)
def rule(request):
    request.node.user_properties.append(("rule", "pods MUST reach pods"))


@pytest.fixture
def probes():
    raise ProbeDeploymentError("probes never Ready")


@pytest.mark.netconform
def test_refused():
    raise ApiException(status=403, reason="Forbidden")


@pytest.mark.netconform
def test_dropped():
    raise urllib3.exceptions.ProtocolError("Connection aborted.")


@pytest.mark.netconform
def test_without_probes(probes):
    pass
"""


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_an_api_refusal_or_a_fixture_that_could_not_test_exits_2(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_checks=API_REFUSALS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rfE")
    result.assert_outcomes(errors=3)
    assert result.ret == EXIT_COULD_NOT_TEST
    result.stdout.fnmatch_lines(
        [
            "*COULD NOT TEST: HTTP 403 Forbidden*",
            "*COULD NOT TEST: ProtocolError: Connection aborted.*",
            "*COULD NOT TEST: probes never Ready*",
        ]
    )


def test_no_could_not_test_text_is_written_by_hand_in_the_kit() -> None:
    # The words come from the error's type, through one constant (report.COULD_NOT_TEST_PREFIX).
    written = []
    for path in sorted(
        [
            *(ROOT / "conformance" / "kit").glob("*.py"),
            *(ROOT / "conformance" / name for name in ("conftest.py", "plugin.py")),
        ]
    ):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "COULD NOT TEST" in line and "COULD_NOT_TEST_PREFIX =" not in line:
                written.append(f"{path.name}:{number}: {line.strip()}")
    assert written == []


CRASHING = """
import os

import pytest


@pytest.fixture(autouse=True)
def rule(request):
    request.node.user_properties.append(("rule", "pods MUST reach pods"))


@pytest.mark.netconform
def test_worker_dies():
    os._exit(1)  # as a segfault or the OOM killer would end an xdist worker
"""


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_a_crashed_xdist_worker_could_not_test(pytester: pytest.Pytester) -> None:
    pytester.mkdir("conformance")  # where the suite's checks are in node IDs
    pytester.path.joinpath("conformance", "test_crash.py").write_text(CRASHING)
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "1", "conformance")
    result.stdout.fnmatch_lines(["*worker 'gw0' crashed while running*"])
    assert result.ret == EXIT_COULD_NOT_TEST  # pytest alone says 1: a failed test
