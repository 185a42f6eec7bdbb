"""Stand-in checks the prefetch plans for, and fake items of them (as pytest's items answer):
``check_volume`` writes a file in one container of a probe pod and reads it in the other,
``check_info`` asks both containers; each over the three ring pods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fake_items import FakeItem, item

from conformance.kit.exchanges.prefetch import Step, prefetched_by
from conformance.kit.probes.model import ProbeMap

PODS = ("probe-node-1", "probe-node-2", "probe-node-3")


def volume_planner(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """As test_shared_volumes plans: write in the writer (stage 0), read in the reader (1)."""
    pod, writer, reader = params["pod"], params["writer"], params["reader"]
    name = f"f-{nonce}"
    return [
        Step("write", pod, writer, {"op": "write_file", "name": name, "seed": nonce}, stage=0),
        Step("read", pod, reader, {"op": "read_file", "name": name}, stage=1),
    ]


def info_planner(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    return [Step(f"{c}.info", params["pod"], c, {"op": "info"}) for c in ("a", "b")]


@prefetched_by(volume_planner)
def check_volume(pod: str, writer: str, reader: str) -> None:
    """A stand-in for a check function."""


@prefetched_by(info_planner)
def check_info(pod: str) -> None:
    """A stand-in for a check function."""


def check_unmarked(pod: str) -> None:
    """Not prefetched."""


def volume_items() -> list[FakeItem]:
    return [
        item(f"test_v.py::check_volume[{w}->{r}-{pod}]", check_volume, pod=pod, writer=w, reader=r)
        for pod in PODS
        for w, r in (("a", "b"), ("b", "a"))
    ]


def info_items() -> list[FakeItem]:
    return [item(f"test_i.py::check_info[{pod}]", check_info, pod=pod) for pod in PODS]
