"""netlab's layout as docs/architecture.md tells it: the API server's layers (HTTP over the
generic verbs over the resources' rules over the control plane) imported only downwards, and
the module table listing every module. No import circle: tests/unit/test_layers.py, for
conformance and netlab alike."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETLAB = ROOT / "netlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """netlab module -> the netlab modules it imports (anywhere in the file, also under
    TYPE_CHECKING or inside a function: each is an edge of a circle)."""
    paths = {module_name(p): p for p in NETLAB.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for target in targets:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


# Each API layer may import only the layers after it in this list (and what is outside them).
API_LAYERS = (
    ("netlab.api.server", "netlab.api.eviction", "netlab.api.execs", "netlab.api.logs"),
    ("netlab.api.rest",),
    ("netlab.api.controlplane",),
    ("netlab.api.resources",),
    ("netlab.api.controllers",),
    ("netlab.api.cluster",),
)


def _layer(module: str) -> int | None:
    for position, prefixes in enumerate(API_LAYERS):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            return position
    return None


def test_api_layers_import_only_downwards() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (mine := _layer(module)) is not None
        and (theirs := _layer(target)) is not None
        and theirs < mine
    )
    assert not upward, f"netlab.api layers imported upwards: {upward}"


def documented_modules() -> set[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## netlab/") :]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(NETLAB))
        if p.name != "__init__.py"
        else f"{p.parent.relative_to(NETLAB)}/"
        for p in NETLAB.rglob("*.py")
        if p.parent != NETLAB or p.name != "__init__.py"
    ),
)
def test_architecture_lists_the_module(path: str) -> None:
    assert path in documented_modules(), (
        f"docs/architecture.md's netlab module table has no row for `{path}`"
    )
