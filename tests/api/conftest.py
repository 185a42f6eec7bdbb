"""The API tier's shared server: one live API server with fake nodes for the session
(``tests/support/live_api.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis_profile  # noqa: F401  (no deadline per example)
import pytest
from live_api import LiveServer, serving


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared server. Its ServiceAccount controller acts at once (sa-delay=0), so tests of
    other behaviour can create pods right after their namespace; tests/api/test_api_faults.py
    has the lag."""
    with serving(tmp_path_factory, ("sa-delay=0",)) as server:
        yield server
