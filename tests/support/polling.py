"""Waiting in the project's own tests: poll a condition (tenacity, never a sleep) until it
holds or its deadline passes. Shared by the unit, API, lab and end-to-end tests (``tests/support``
is on ``sys.path`` through pytest's ``pythonpath`` setting in ``pyproject.toml``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


def eventually(condition: Callable[[], T], timeout: float, *, interval: float = 0.1) -> T:
    """Call ``condition`` every ``interval`` s until it returns something true, for at most
    ``timeout`` s; its last (false) value when time ran out. An exception it raises propagates
    at once."""
    result: T = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )(condition)
    return result


def until(condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.1) -> T:
    """`eventually`, failing the test saying ``what`` did not happen within ``timeout`` s."""
    result = eventually(condition, timeout, interval=interval)
    if not result:
        pytest.fail(f"{what} not within {timeout} s", pytrace=False)
    return result
