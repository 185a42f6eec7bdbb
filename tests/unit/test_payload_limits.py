"""Every agent request the suite would send on a 100-node dual-stack cluster with every ordered
pair checked fits the exec limits of older API servers.

API servers before 1.30 speak only the v4 exec protocol, where the suite passes a batch as one
argv element, and Linux refuses an argument longer than 128 KiB (MAX_ARG_STRLEN). Here the real
checks' planners plan the whole run (the reachability sweep and the prefetch, from the real test
modules' markers) over a fake 100-node ProbeMap, the real sweep and prefetch send it through a
`ProbeClient` whose exec only records what it was given, and every payload is measured.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fake_items import FakeItem, item
from local_agents import OfflineProbeClient

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.pairs import PairPlan
from conformance.kit.exchanges.prefetch import PREFETCH_MARKER, run_prefetch
from conformance.kit.exchanges.prefetch import plan_for_items as plan_prefetch
from conformance.kit.exchanges.reachability import SWEEP_MARKER, run_sweep
from conformance.kit.exchanges.reachability import plan_for_items as plan_sweep
from conformance.kit.probes.client import MAX_PAYLOAD_BYTES, ExecResult
from conformance.kit.probes.model import ProbeMap, planned_probes
from conformance.kit.run.cases import PAIRS_ALL, plan_cases

ROOT = Path(__file__).resolve().parents[2]
NODES = 100
#: Linux's MAX_ARG_STRLEN: the longest single argument execve takes, its NUL included.
MAX_ARG_STRLEN = 128 * 1024


def node_name(index: int) -> str:
    """Cloud-length node names (they end up in pod names, never in requests, but be real)."""
    return f"ip-10-0-{index // 250}-{index % 250}.eu-west-1.compute.internal"


def probe_map() -> ProbeMap:
    nodes = [node_name(i) for i in range(1, NODES + 1)]
    probes = []
    for index, probe in enumerate(planned_probes(nodes)):
        node = nodes.index(probe.node) + 1
        host = f"10.0.{node // 250}.{node % 250}"
        ips = (
            (host, f"fd00:10:0:{node:x}::1")
            if probe.role == "hostprobe"
            else (f"10.244.{node}.{index % 250 + 2}", f"fd00:10:244:{node:x}::{index:x}")
        )
        ports = probe.containers
        if probe.role == "hostprobe":  # learned after deploy: ephemeral, five digits
            ports = tuple(dataclasses.replace(c, tcp_port=40001, udp_port=40002) for c in ports)
        probes.append(dataclasses.replace(probe, pod_ips=ips, host_ip=host, containers=ports))
    return ProbeMap(
        namespace="netconform-20260101-000000-abcd-123456",
        probes=tuple(probes),
        node_addresses={n: (f"10.0.0.{i}", f"fd00:10::{i:x}") for i, n in enumerate(nodes, 1)},
    )


def conformance_items(discovery: Discovery) -> list[FakeItem]:
    """Every swept or prefetched item the real test modules have on ``discovery``."""
    items: list[FakeItem] = []
    plan = PairPlan(None, 0)  # --pairs all: every ordered pair, the largest plan
    for path in sorted((ROOT / "conformance").glob("test_*.py")):
        module = importlib.import_module(f"conformance.{path.stem}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            marks = {m.name for m in getattr(function, "pytestmark", [])}
            if not name.startswith("test_") or not marks & {SWEEP_MARKER, PREFETCH_MARKER}:
                continue
            fixtures = set(inspect.signature(function).parameters)
            for params, ident in plan_cases(
                fixtures,
                getattr(module, "PROTOCOLS", None),
                discovery,
                plan,
                getattr(module, "PAIRS", PAIRS_ALL),
            ):
                for extra, more in explicit_cases(function):
                    items.append(
                        item(f"{path.name}::{name}[{more}{ident}]", function, **params, **extra)
                    )
    return items


def explicit_cases(function: Any) -> list[tuple[dict[str, Any], str]]:
    """The cases of a check's own ``@pytest.mark.parametrize`` marks (their product)."""
    cases: list[tuple[dict[str, Any], str]] = [({}, "")]
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = [v if len(names) > 1 else (v,) for v in values]
        cases = [
            ({**done, **dict(zip(names, row, strict=True))}, f"{ident}{'-'.join(map(str, row))}-")
            for done, ident in cases
            for row in rows
        ]
    return cases


class MeasuringClient(OfflineProbeClient):
    """Execs nothing: records each payload's size and answers every request as a healthy
    cluster's agent would (so the sweep and prefetch take their whole course)."""

    def __init__(self) -> None:
        super().__init__(None, "ns", Timeouts())  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self.payloads: list[int] = []
        self.largest_request = 0

    def answer_exec(
        self, pod: str, command: list[str], stdin: str | None, timeout: float
    ) -> ExecResult:
        assert stdin is not None
        batch = json.loads(stdin)
        requests = batch["requests"] if isinstance(batch, dict) else batch
        with self._lock:
            self.payloads.append(len(stdin.encode()))
            self.largest_request = max(
                self.largest_request, *(len(json.dumps(r).encode()) for r in requests)
            )
        return ExecResult(json.dumps([answer(r) for r in requests]), "", 0)


def answer(request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    found: dict[str, Any] = {"ok": True, "op": op}
    if op == "capture_start":
        found["capture_id"] = "cap-1"
    elif op in ("seen", "capture_result"):
        found.update(records=[], packets=[], missing=[])
    elif op in ("connect", "icmp", "transfer"):
        found["peer_seen"] = "10.244.1.2"
    elif op == "addresses":
        found["interfaces"] = []
    return found


@pytest.fixture(scope="module")
def measured() -> MeasuringClient:
    probes = probe_map()
    discovery = Discovery(
        nodes=tuple(node_name(i) for i in range(1, NODES + 1)),
        family_plan=FamilyPlan(tested=(4, 6)),
    )
    items = conformance_items(discovery)
    client = MeasuringClient()
    _, targets = plan_sweep(items, probes)
    assert len(targets) > 100_000  # every ordered pair, both families, every protocol
    run_sweep(client, targets, nonce_prefix="nc-0123abcd-")
    run_prefetch(client, plan_prefetch(items, probes, "20260101-000000-abcd"))
    print(
        f"100-node dual-stack plan: {len(items)} items, {len(targets)} exchanges, "
        f"{len(client.payloads)} execs; largest payload {max(client.payloads)} bytes "
        f"(limit {MAX_PAYLOAD_BYTES}), largest single request {client.largest_request} bytes"
    )
    return client


def test_every_exec_payload_stays_under_the_split_limit(measured: MeasuringClient) -> None:
    assert max(measured.payloads) <= MAX_PAYLOAD_BYTES


def test_every_exec_payload_fits_one_argv_element(measured: MeasuringClient) -> None:
    # The payload is one argument of `sh -c ... PAYLOAD` under the v4 protocol; +1 for its NUL.
    assert max(measured.payloads) + 1 < MAX_ARG_STRLEN
    assert MAX_PAYLOAD_BYTES + 1 < MAX_ARG_STRLEN


def test_the_plan_really_needs_splitting(measured: MeasuringClient) -> None:
    # Guard against a plan that shrank: the split must be exercised, not trivially satisfied.
    assert sum(1 for size in measured.payloads if size > MAX_PAYLOAD_BYTES // 2) > 0
