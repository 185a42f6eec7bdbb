"""The package as users get it (root, a lab): the wheel built from the checkout, installed into
a fresh virtualenv outside it, and the suite run from an empty folder against a lab, with
nothing of the checkout on ``sys.path``: ``pytest --kubeconfig PATH`` and
``pytest --kubeconfig=PATH`` both run the whole suite, exit 0, with test IDs
``conformance/test_*.py::...`` and that folder as rootdir. Building and installing print no
deprecation warning about our metadata.

The lab is booted with the checkout's netlab (it is not part of the wheel); labs are named
``$NETLAB_TEST_LAB_PREFIX`` (default ``tw``) + 6 hex digits.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "tw")
#: What a wheel is built from (setuptools' packages.find and the readme): nothing else of the
#: checkout is copied, so stray files in a working tree never reach the wheel.
SOURCES = ("pyproject.toml", "README.md", "conformance", "netlab")
INSTALL_TIMEOUT = 600
SUITE_TIMEOUT = 600
TEST_ID = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", re.MULTILINE)

pytestmark = pytest.mark.needs_lab


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr


def clean_environment(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: its bin first, no PYTHONPATH, no checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "KUBECONFIG")
        and not key.startswith("NETCONFORM_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def deprecations(output: str) -> list[str]:
    return [line for line in output.splitlines() if "deprecat" in line.lower()]


@dataclass(frozen=True)
class Installed:
    venv: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built from a copy of the checkout's sources and installed into a new
    virtualenv in a temporary folder."""
    base = tmp_path_factory.mktemp("wheel")
    source, dist, venv = base / "source", base / "dist", base / "venv"
    source.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    env = clean_environment(venv)
    started = time.monotonic()
    code, built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(source)],
        cwd=base,
        env=env,
        timeout=INSTALL_TIMEOUT,
    )
    assert code == 0, built[-4000:]
    assert not deprecations(built), deprecations(built)
    wheels = list(dist.glob("k8s_netconform-*.whl"))
    assert len(wheels) == 1, wheels
    code, made = run(
        [sys.executable, "-m", "venv", str(venv)], cwd=base, env=env, timeout=INSTALL_TIMEOUT
    )
    assert code == 0, made
    code, pip = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", str(wheels[0])],
        cwd=base,
        env=env,
        timeout=INSTALL_TIMEOUT,
    )
    assert code == 0, pip[-4000:]
    assert not deprecations(pip), deprecations(pip)
    print(f"wheel {wheels[0].name} built and installed in {time.monotonic() - started:.0f} s")
    return Installed(venv, env)


@pytest.fixture(scope="module")
def kubeconfig() -> Iterator[Path]:
    """A healthy 2-node lab, booted with the checkout's netlab."""
    name = LAB_PREFIX + secrets.token_hex(3)
    netlab = [sys.executable, "-m", "netlab"]
    up = subprocess.run(
        [*netlab, "up", "--nodes", "2", "--name", name],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd="/",
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield Path(up.stdout.strip().splitlines()[-1])
    finally:
        down = subprocess.run(
            [*netlab, "down", "--name", name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert down.returncode == 0, down.stderr[-2000:]


def test_nothing_of_the_checkout_is_imported(installed: Installed, tmp_path: Path) -> None:
    code, out = run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import sys, conformance, netlab; print(conformance.__file__); print(netlab.__file__);"
            " print(sys.path)",
        ],
        cwd=tmp_path,
        env=installed.env,
        timeout=60,
    )
    assert code == 0, out
    assert str(ROOT) not in out, out
    assert out.splitlines()[0].startswith(str(installed.venv)), out


@pytest.mark.parametrize(
    "spelling",
    [("--kubeconfig", "{}"), ("--kubeconfig={}",)],
    ids=["kubeconfig-space-path", "kubeconfig-equals-path"],
)
def test_suite_runs_from_an_empty_folder(
    installed: Installed, kubeconfig: Path, tmp_path: Path, spelling: tuple[str, ...]
) -> None:
    empty = tmp_path / "ci-checkout"
    empty.mkdir()
    option = [part.format(kubeconfig) for part in spelling]
    started = time.monotonic()
    code, out = run(
        [str(installed.venv / "bin" / "pytest"), *option, "-p", "no:cacheprovider", "-v"],
        cwd=empty,
        env=installed.env,
        timeout=SUITE_TIMEOUT,
    )
    ids = TEST_ID.findall(out)
    print(
        f"{' '.join(spelling)}: exit {code}, {len(ids)} checks in {time.monotonic() - started:.0f} s"
    )
    assert code == 0, out[-6000:]
    assert f"rootdir: {empty}" in out
    assert len(ids) > 50, out[-3000:]
    modules = {test_id.split("::")[0] for test_id, _ in ids}
    assert all(re.fullmatch(r"conformance/test_\w+\.py", m) for m in modules), modules
    assert len(modules) == len(list((ROOT / "conformance").glob("test_*.py")))


def test_other_runs_say_how_to_ask_for_the_suite(
    installed: Installed, kubeconfig: Path, tmp_path: Path
) -> None:
    pytest_bin = str(installed.venv / "bin" / "pytest")
    env = {**installed.env, "KUBECONFIG": str(kubeconfig)}
    # $KUBECONFIG alone is no request: nothing runs, and the run says how to ask.
    code, out = run([pytest_bin, "-p", "no:cacheprovider"], cwd=tmp_path, env=env, timeout=120)
    assert code == pytest.ExitCode.NO_TESTS_COLLECTED, out
    assert "pytest --netconform" in out, out
    assert "pytest --kubeconfig PATH" in out, out
    # --netconform asks for it, against $KUBECONFIG.
    code, out = run(
        [pytest_bin, "--netconform", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert code == 0, out
    assert re.search(r"^conformance/test_localhost\.py::", out, re.MULTILINE), out
    # A project's own tests with the plugin installed: only them.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_own.py").write_text("def test_own():\n    pass\n")
    code, out = run(
        [pytest_bin, "tests", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env=env, timeout=120
    )
    assert code == 0, out
    assert "1 passed" in out, out
