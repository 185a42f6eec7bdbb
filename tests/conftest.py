"""What every tier of the project's own tests shares: the markers saying what a test needs from
the machine, and the one place that skips a test whose needs this run cannot meet.

``needs_root("why")``: the test itself needs root (namespaces, setpriv, apt), and says why.
``needs_lab``: the test builds netlab's namespaces, links and runc containers, or boots whole
labs; that needs root too. Both run as root (CI, ``./run.sh test``) and skip, saying so,
otherwise; no test checks ``os.geteuid()`` itself (``tests/unit/test_tiers.py`` keeps it so).

``./run.sh test`` runs ``-n 2 --dist loadfile``: each test module is one unit of work, so its
module fixtures (a lab pool, the genuine cluster) are made once, on one worker. (Not
``loadgroup``: with pytest 9 the group pytest-xdist writes into each test ID is lost, and every
test became a unit of its own, each worker starting the detection matrix's whole pool.)
"""

from __future__ import annotations

import os

import pytest

# pytest also loads this file when the suite runs from the checkout's root (its `test*` folders
# are searched for conftests before the plugin picks the suite): it imports nothing from
# tests/support and no test-only package.
NEEDS_ROOT = "needs_root"
NEEDS_LAB = "needs_lab"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{NEEDS_ROOT}(why): the test needs root for the reason given; skipped when not root",
    )
    config.addinivalue_line(
        "markers",
        f"{NEEDS_LAB}: the test builds netlab namespaces and runc containers or boots labs "
        "(root); skipped when not root",
    )


def unmet_need(item: pytest.Item, is_root: bool) -> str | None:
    """Why ``item`` cannot run here (its skip reason), or None when it can."""
    if is_root:
        return None
    lab = item.get_closest_marker(NEEDS_LAB)
    if lab is not None:
        return "needs root: it builds netlab's network namespaces and runc containers (run as root)"
    root = item.get_closest_marker(NEEDS_ROOT)
    if root is not None:
        why = root.args[0] if root.args else root.kwargs.get("why", "")
        return f"needs root: {why} (run as root)" if why else "needs root (run as root)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    for item in items:
        reason = unmet_need(item, is_root)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
