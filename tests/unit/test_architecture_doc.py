"""docs/architecture.md lists every module of ``conformance/`` (its "Modules" table, paths
relative to ``conformance/``), and names no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def conformance_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index("## conformance/") : text.index("## netlab/")]


def modules_on_disk(*, packages: bool = False) -> set[str]:
    """Paths of ``conformance/``'s modules (with the packages' ``__init__.py`` if asked)."""
    base = ROOT / "conformance"
    return {
        str(path.relative_to(base))
        for path in base.rglob("*.py")
        if (packages or path.name != "__init__.py") and "__pycache__" not in path.parts
    }


def modules_in_table() -> set[str]:
    section = conformance_section()
    table = section[section.index("### Modules") : section.index("### One check's path")]
    return set(re.findall(r"`([\w/]+\.py)`", table))


def test_every_module_is_in_the_table() -> None:
    missing = sorted(modules_on_disk() - modules_in_table())
    assert missing == [], f"docs/architecture.md's module table misses {missing}"


def test_the_table_names_no_module_that_is_gone() -> None:
    gone = sorted(modules_in_table() - modules_on_disk(packages=True))
    assert gone == [], f"docs/architecture.md's module table names {gone}, not in conformance/"


def test_every_kit_package_is_in_the_package_table() -> None:
    packages = {
        f"kit/{path.name}/"
        for path in (ROOT / "conformance" / "kit").iterdir()
        if (path / "__init__.py").exists()
    }
    section = conformance_section()
    table = section[section.index("### The kit's packages") : section.index("### Modules")]
    assert packages <= set(re.findall(r"`(kit/\w+/)`", table))
