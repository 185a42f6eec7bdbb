"""The project's own tests keep their tiers: each tier folder holds only test modules and its
conftest, helpers live in ``tests/support`` alone, no test module imports another test module
or a conftest, and no test checks for root itself (``needs_root``/``needs_lab`` and the one
skip in ``tests/conftest.py`` do)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
TIERS = ("unit", "api", "lab", "e2e", "realk8s")
SKIP_PLACE = TESTS / "conftest.py"


def python_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def root_checks(path: Path) -> list[int]:
    """Lines of ``path`` that call ``geteuid()`` or ``getuid()`` and compare it (a root check)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            for part in ast.walk(node):
                if (
                    isinstance(part, ast.Call)
                    and isinstance(part.func, ast.Attribute | ast.Name)
                    and (part.func.attr if isinstance(part.func, ast.Attribute) else part.func.id)
                    in ("geteuid", "getuid")
                ):
                    lines.append(node.lineno)
    return lines


def test_the_tiers_are_the_folders_of_tests() -> None:
    folders = {path.name for path in TESTS.iterdir() if path.is_dir() and path.name[0] not in "._"}
    assert folders == {*TIERS, "support"}


@pytest.mark.parametrize("tier", TIERS)
def test_a_tier_holds_only_test_modules_and_its_conftest(tier: str) -> None:
    others = [
        path.relative_to(TESTS).as_posix()
        for path in (TESTS / tier).rglob("*.py")
        if path.name != "conftest.py" and not path.name.startswith("test_")
    ]
    assert not others, f"helpers belong in tests/support, not in tests/{tier}: {others}"


def test_support_holds_no_tests() -> None:
    tests = [
        path.name for path in (TESTS / "support").glob("*.py") if path.name.startswith("test_")
    ]
    assert not tests, f"tests/support is for helpers only: {tests}"


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    test_modules = {path.stem for path in python_files() if path.name.startswith("test_")}
    imports = [
        f"{path.relative_to(TESTS).as_posix()}:{line} imports {module}"
        for path in python_files()
        for line, module in imported_modules(path)
        if module in test_modules or module == "conftest"
    ]
    assert not imports, "shared helpers go to tests/support:\n" + "\n".join(imports)


def test_test_module_names_are_unique_across_tiers() -> None:
    # The tier folders are not packages: two test modules of one name break collection.
    seen: dict[str, list[str]] = {}
    for path in python_files():
        if path.name.startswith("test_"):
            seen.setdefault(path.name, []).append(path.relative_to(TESTS).as_posix())
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def test_only_the_one_skip_place_checks_for_root() -> None:
    checks = [
        f"{path.relative_to(TESTS).as_posix()}:{line}"
        for path in python_files()
        if path != SKIP_PLACE
        for line in root_checks(path)
    ]
    assert not checks, "mark the test needs_root or needs_lab instead:\n" + "\n".join(checks)
    assert root_checks(SKIP_PLACE), "tests/conftest.py no longer decides who is root"


def test_the_root_check_finder_finds_root_checks(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "if os.geteuid() != 0:\n"
        "    pass\n"
        "monkeypatch_target = (os, 'geteuid')\n"
        "x = 0 == os.getuid()\n"
    )
    assert root_checks(sample) == [2, 5]


def test_the_top_conftest_needs_nothing_but_pytest_and_the_standard_library() -> None:
    # pytest loads tests/conftest.py when the suite runs from the checkout's root (the `test*`
    # folders are searched for conftests first), where tests/support is not on the path: a
    # plugin or import from there stopped every suite run of the tiers (exit 4).
    top = TESTS / "conftest.py"
    tree = ast.parse(top.read_text(), str(top))
    assert not any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets)
        for node in tree.body
    )
    allowed = {"__future__", "pytest", *sys.stdlib_module_names}
    assert [m for _, m in imported_modules(top) if m not in allowed] == []


def test_the_suite_runs_from_the_checkouts_root_with_a_real_kubeconfig_path(
    tmp_path: Path,
) -> None:
    # The kubeconfig's path exists: pytest then searches conftests next to it and in the root's
    # `test*` folders (a path that does not exist took another way, which hid the failure).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--kubeconfig", str(kubeconfig), "-p", "no:cacheprovider"],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "Error importing plugin" not in output
    assert done.returncode not in (3, 4), output[-2000:]  # internal error, usage error
