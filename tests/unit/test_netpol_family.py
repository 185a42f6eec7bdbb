"""The NetworkPolicy family's pure parts: the model's plan, the scenarios' truth tables (checked
against netlab's literal reading of the API documentation, an independent one), the judge and
its failure text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from conformance.kit.netpol.deployment import sweep, undo_actions
from conformance.kit.netpol.judge import (
    BLOCKED,
    OPEN,
    REACHED,
    TableResult,
    failure_text,
    judge_table,
    table_failure,
    table_property,
)
from conformance.kit.netpol.model import (
    NS_LABEL,
    POD_LABEL,
    PORTS,
    Cell,
    Model,
    ModelPod,
    plan_model,
    port_name,
)
from conformance.kit.netpol.scenarios import (
    SCENARIOS,
    ApplyPolicy,
    DeletePolicy,
    LabelNamespace,
    LabelPod,
    Scenario,
    by_id,
)
from netlab.netpol.model import (
    NamedPort,
    Packet,
    PolicyInputs,
    Workload,
    parse_policy,
    reference_allows,
)

NODES = ("node-1", "node-2", "node-3")


def deployed(families: tuple[int, ...] = (4,), nodes: tuple[str, ...] = NODES) -> Model:
    """A model as deployment leaves it: namespaces named by their short names, an address of
    each family per pod."""
    planned = plan_model({s: s for s in ("x", "y", "z")}, nodes, families)
    pods = []
    for index, pod in enumerate(planned.pods):
        ips = []
        if 4 in families:
            ips.append(f"10.244.{index // 250}.{index % 250 + 2}")
        if 6 in families:
            ips.append(f"fd00:10:244::{index + 2:x}")
        pods.append(ModelPod(pod.namespace, pod.name, pod.letter, pod.node, tuple(ips)))
    return Model(planned.namespaces, tuple(pods), families)


def reference_tables(model: Model, scenario: Scenario) -> list[dict[Cell, bool]]:
    """Each step's table as netlab's reference reads the API documentation, after the step's
    changes (policies created, replaced, deleted; labels added, removed)."""
    policies: dict[tuple[str, str], dict[str, object]] = {}
    pod_labels = {p.key: {POD_LABEL: p.letter} for p in model.pods}
    ns_labels = {s: {NS_LABEL: s} for s in model.namespaces}
    tables = []
    for step in scenario.steps:
        for action in step.actions:
            if isinstance(action, ApplyPolicy):
                policies[(action.namespace, action.name)] = action.spec(model)
            elif isinstance(action, DeletePolicy):
                del policies[(action.namespace, action.name)]
            elif isinstance(action, LabelPod):
                _relabel(pod_labels[action.pod], action.labels)
            elif isinstance(action, LabelNamespace):
                _relabel(ns_labels[action.namespace], action.labels)
        inputs = PolicyInputs(
            policies=tuple(
                parse_policy({"metadata": {"namespace": ns, "name": name}, "spec": spec})
                for (ns, name), spec in policies.items()
            ),
            workloads=tuple(
                Workload(
                    namespace=p.namespace,
                    name=p.name,
                    labels=tuple(sorted(pod_labels[p.key].items())),
                    ips=p.ips,
                    node=p.node,
                    ports=tuple(
                        NamedPort(port_name(port, proto), proto.upper(), port)
                        for port in PORTS
                        for proto in ("tcp", "udp")
                    ),
                )
                for p in model.pods
            ),
            namespaces={s: dict(labels) for s, labels in ns_labels.items()},
        )
        cells = model.cells(model.probes(scenario.ports, scenario.protocols))
        tables.append(
            {
                cell: reference_allows(
                    inputs,
                    Packet(
                        source=str(model.pod(cell.source).ip(cell.probe.family)),
                        destination=str(model.pod(cell.destination).ip(cell.probe.family)),
                        protocol=cell.probe.proto.upper(),
                        port=cell.probe.port,
                    ),
                )
                for cell in cells
            }
        )
    return tables


def _relabel(labels: dict[str, str], change: Mapping[str, str | None]) -> None:
    for key, value in change.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value


@pytest.mark.parametrize("families", [(4,), (6,), (4, 6)], ids=["ipv4", "ipv6", "dual"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_scenario_table_agrees_with_the_reference_reading(
    scenario: Scenario, families: tuple[int, ...]
) -> None:
    model = deployed(families)
    reference = reference_tables(model, scenario)
    for step, expected_by_reference in zip(scenario.steps, reference, strict=True):
        ours = scenario.expected(model, step)
        differing = [c.text for c in ours if ours[c] != expected_by_reference[c]]
        assert not differing, f"{scenario.id} step {step.name}: {differing[:10]}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_every_step_allows_some_cells_and_denies_others_or_says_why(scenario: Scenario) -> None:
    """A step whose table is all open or all closed proves little: only the union and the
    deletion are all open by design."""
    model = deployed()
    for step in scenario.steps:
        values = set(scenario.expected(model, step).values())
        if values == {True}:
            assert (scenario.id, step.name) in {
                ("allow-all-union", "applied"),
                ("policy-deleted", "deleted"),
            }, f"{scenario.id}/{step.name} is all open"
        assert values != {False}, f"{scenario.id}/{step.name} is all closed"


def test_the_model_puts_a_pod_of_every_namespace_on_every_node() -> None:
    model = plan_model({"x": "nx", "y": "ny", "z": "nz"}, [f"node-{i}" for i in range(1, 6)], (4,))
    assert [p.name for p in model.in_namespace("x")] == ["a", "b", "c", "a2", "b2"]
    assert [p.letter for p in model.in_namespace("y")] == ["a", "b", "c", "a", "b"]
    for short in ("x", "y", "z"):
        assert {p.node for p in model.in_namespace(short)} == {f"node-{i}" for i in range(1, 6)}
    cells = model.cells(model.probes((8080,), ("tcp",)))
    assert len(cells) == 15 * 14
    assert all(c.source != c.destination for c in cells)
    pairs = {(model.pod(c.source).node, model.pod(c.destination).node) for c in cells}
    assert len(pairs) == 25  # every ordered pair of nodes, and every node with itself


def test_port_names_fit_the_api_limit() -> None:
    assert all(len(port_name(port, proto)) <= 15 for port in PORTS for proto in ("tcp", "udp"))


def test_labels_a_scenario_adds_are_removed_when_it_ends() -> None:
    undo = undo_actions(by_id("pod-labels-changed").steps[1].actions)
    assert undo == [LabelPod("x/c", {"role": None})]
    undo = undo_actions(by_id("namespace-labels-changed").steps[1].actions)
    assert undo == [LabelNamespace("z", {"env": None})]


# --- the judge -----------------------------------------------------------------------------------


def _judged(observed_states: Mapping[str, str]) -> tuple[Model, TableResult]:
    model = deployed()
    scenario = by_id("default-deny-ingress")
    step = scenario.steps[0]
    expected = scenario.expected(model, step)
    observed = {cell: (OPEN if allowed else BLOCKED, "") for cell, allowed in expected.items()}
    for text, state in observed_states.items():
        cell = next(c for c in expected if c.text == text)
        observed[cell] = (state, "ETIMEDOUT" if state != OPEN else "")
    return model, judge_table(
        scenario.id, step.name, model, expected, observed, seconds=1.5, bound=10.0
    )


def test_a_table_as_expected_is_settled_and_has_no_wrong_cell() -> None:
    _, table = _judged({})
    assert table.settled
    assert table.wrong == ()
    assert table.counts() == {"cells": 144, "wrong": 0, "allowed": 96, "denied": 48}


def test_an_open_denied_cell_and_a_reached_one_are_wrong_and_listed_first() -> None:
    leak = "y/b -> x/a tcp/8080 IPv4"
    delivered = "z/c -> x/b udp/8080 IPv4"
    lost = "x/a -> y/b tcp/8080 IPv4"
    _, table = _judged({leak: OPEN, delivered: REACHED, lost: BLOCKED})
    wrong = table.wrong
    assert [f"{c.source} -> {c.destination} {c.proto}" for c in wrong] == [
        "x/a -> y/b tcp",
        "y/b -> x/a tcp",
        "z/c -> x/b udp",
    ]
    assert table.cells[:3] == wrong
    assert not table.settled


def test_the_failure_is_data_naming_cells_nodes_and_drawing_both_grids() -> None:
    _, table = _judged({"y/b -> x/a tcp/8080 IPv4": OPEN, "z/c -> x/b udp/8080 IPv4": REACHED})
    failure = table_failure("the rule", ["x/deny {...}"], [table])
    assert failure.rule == "the rule"
    assert failure.observed == (
        "2 of 144 cells wrong (step 'applied'): 2 denied but open or reached, 0 allowed but closed"
    )
    assert failure.nodes == ("node-1", "node-2", "node-3")
    assert failure.details[0] == "policies: x/deny {...}"
    text = failure.text()
    assert text == failure_text("the rule", ["x/deny {...}"], [table])
    assert text.startswith("RULE BROKEN: the rule\n")
    assert "step 'applied': 2 of 144 cells wrong" in text
    assert "y/b (node-2) -> x/a (node-1) tcp/8080 IPv4: expected denied, observed open" in text
    assert (
        "z/c (node-3) -> x/b (node-2) udp/8080 IPv4: expected denied, observed reached "
        "(ETIMEDOUT)" in text
    )
    rows = [line for line in failure.details if line.startswith("    y/b ")]  # grid rows
    assert rows
    assert "O!" in rows[0]  # the tcp grid: the leak marked, the expected grid beside
    assert "tcp/8080 IPv4 observed" in text
    assert "udp/8080 IPv4 observed" in text


def test_the_property_carries_counts_timing_and_every_cell() -> None:
    _, table = _judged({"y/b -> x/a tcp/8080 IPv4": OPEN})
    (entry,) = table_property([table])
    assert entry["wrong"] == 1
    assert entry["seconds"] == 1.5
    assert entry["bound"] == 10.0
    assert entry["settled"] is False
    cells = entry["cells_detail"]
    assert isinstance(cells, list)
    assert len(cells) == 144
    assert cells[0]["observed"] == "open"
    assert cells[0]["expected_allowed"] is False


# --- the reports -------------------------------------------------------------------------------


def test_the_tables_travel_from_the_junit_property_to_the_summary_and_the_html() -> None:
    import json as json_

    import jsonschema
    from report_runs import summary_of

    from conformance.kit.reporting.html import render_page
    from conformance.kit.reporting.results import SummaryCollector, summary_schema

    _, table = _judged({"y/b -> x/a tcp/8080 IPv4": OPEN})
    nodeid = "conformance/test_network_policy.py::test_network_policy[default-deny-ingress]"
    collector = SummaryCollector()
    value = json_.dumps(table_property([table]))
    collector.record_phase(
        nodeid,
        "call",
        "failed",
        2.0,
        message="default-deny-ingress: ...",
        rule="NetworkPolicies MUST be enforced",
        properties={"netconform.netpol_tables": value},
    )
    (result,) = collector.results()
    assert result.truth_tables is not None
    assert result.truth_tables[0]["wrong"] == 1
    summary = summary_of([result], NODES, exitstatus=1)
    jsonschema.Draft202012Validator(summary_schema()).validate(json_.loads(json_.dumps(summary)))
    page = render_page(summary)
    assert "NetworkPolicy truth tables" in page
    assert "step applied: 1 of 144 cells wrong" in page
    assert page.count('class="nc-tt-wrong"') == 1
    assert "y/b (node-2) -&gt; x/a (node-1): expected denied, observed open" in page


class CutOnceAgents:
    """Model pods' agents where the stream of the first batch of ``cut_source`` breaks after
    its probes went out while the change was not yet in force (every destination records
    them); the batch sent again finds every cell closed. Records are kept per destination."""

    def __init__(
        self, model: Model, namespace: str, cut_source: str, records: dict[str, set[str]]
    ) -> None:
        self.model = model
        self.namespace = namespace
        self.cut_source = cut_source
        self.records = records

    def call(self, pod: str, _: str, requests: Sequence[Mapping[str, Any]], **how: Any) -> Any:
        """Answers every request unanswered; ``how["renew"]`` makes the batch sent again."""
        renew = how.get("renew")
        source = self._pod(pod)
        by_ip = {ip: p for p in self.model.pods for ip in p.ips}
        if source.key == self.cut_source:
            for request in requests:  # the cut try: delivered, its answers lost with the stream
                self.records.setdefault(by_ip[request["host"]].key, set()).add(request["nonce"])
            requests = renew(requests) if renew else requests
        return [{"ok": False, "errno": "ETIMEDOUT"} for _ in requests]

    def call_one(self, pod: str, container: str, request: Mapping[str, Any]) -> dict[str, Any]:
        prefix = str(request["nonce_prefix"])
        seen = [n for n in self.records.get(self._pod(pod).key, set()) if n.startswith(prefix)]
        return {"ok": True, "records": [{"nonce": n} for n in seen]}

    def close(self) -> None:
        pass

    def _pod(self, name: str) -> ModelPod:
        return next(p for p in self.model.pods if (p.namespace, p.name) == (self.namespace, name))


def test_a_try_cut_off_before_a_change_took_hold_is_not_taken_for_the_answered_try() -> None:
    # An API server restarting cuts an exec; the batch is sent again seconds later. What the
    # first try delivered must not turn the second try's denied cells into "reached".
    model = deployed()
    records: dict[str, set[str]] = {}
    fake = SimpleNamespace(
        model=model, agents=lambda namespace: CutOnceAgents(model, namespace, "y/a", records)
    )
    cells = model.cells(model.probes((PORTS[0],), ("tcp", "udp")))
    found = sweep(fake, cells, records=True)  # type: ignore[arg-type]
    from_cut = [c for c in cells if c.source == "y/a"]
    assert sum(len(nonces) for nonces in records.values()) == len(from_cut)  # the cut try's
    assert {found.observed[c][0] for c in cells} == {BLOCKED}
    assert all(found.nonces[c].endswith(".1") for c in from_cut)
    assert not any(found.nonces[c].endswith(".1") for c in cells if c.source != "y/a")
