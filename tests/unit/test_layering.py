"""The dependency rule of the layout: suites use the kit, the kit never imports a suite, and
nothing in ``conformance/`` imports ``netlab`` (the suite must run unchanged on any cluster)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_conformance_never_imports_netlab() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "netlab"
        )
        for path in python_files("conformance")
    }
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert not offenders, f"conformance/ must not import netlab: {offenders}"


def test_kit_never_imports_a_suite() -> None:
    offenders = {}
    for path in python_files("conformance/kit"):
        suites = sorted(
            m
            for m in imported_modules(path)
            if m.startswith("conformance.test_") or m == "conformance.plugin"
        )
        if suites:
            offenders[str(path.relative_to(ROOT))] = suites
    assert not offenders, f"the kit must not import suites or the plugin: {offenders}"


@pytest.mark.parametrize("package", ["conformance", "netlab"])
def test_every_module_parses(package: str) -> None:
    # Guards the layering checks above from silently reading nothing.
    files = python_files(package)
    assert files, f"no Python files found under {package}/"
    for path in files:
        ast.parse(path.read_text(), filename=str(path))
