"""A stand-in for a collected pytest item, as the kit's planners read one: ``nodeid``,
``callspec.params`` and ``get_closest_marker`` (answered from the marks the check function
carries, as pytest's own item does)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass(frozen=True)
class FakeCallSpec:
    params: Mapping[str, Any]


@dataclass
class FakeItem:
    nodeid: str
    function: Callable[..., Any]
    callspec: FakeCallSpec | None
    #: Every marker name asked for, in order.
    asked: list[str] = field(default_factory=list)

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        self.asked.append(name)
        marks: list[pytest.Mark] = getattr(self.function, "pytestmark", [])
        return next((mark for mark in marks if mark.name == name), None)


def item(nodeid: str, function: Callable[..., Any], **params: Any) -> FakeItem:
    """An item of ``function`` with these parameters (none: not parametrized)."""
    return FakeItem(nodeid, function, FakeCallSpec(params) if params else None)
