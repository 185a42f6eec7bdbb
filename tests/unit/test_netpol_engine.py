"""The NetworkPolicy engine's syncs without namespaces: which nodes get written, with what
transaction, after a change, a no-op and a failed write (``nft`` replaced by a recorder)."""

from __future__ import annotations

import asyncio

import pytest

from netlab.contract import JSONDict
from netlab.netpol import engine as engine_module
from netlab.netpol.engine import PolicyEngine, PolicyEngineError
from netlab.spec import LabSpec


def pod(name: str, node: str, ip: str) -> JSONDict:
    return {
        "metadata": {"namespace": "x", "name": name, "uid": f"uid-{name}", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


DENY = {
    "metadata": {"namespace": "x", "name": "deny", "uid": "p1"},
    "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]},
}
NAMESPACE = {"metadata": {"name": "x", "uid": "n1", "labels": {"kubernetes.io/metadata.name": "x"}}}


class Recorder:
    """Stands for ``nft -f``: records (netns, document); fails for ``failing`` netns."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.failing: set[str] = set()

    async def __call__(self, netns: str, document: str) -> None:
        if netns in self.failing:
            raise PolicyEngineError(f"nft in {netns} exited 1: boom")
        self.writes.append((netns, document))

    def nodes(self) -> list[str]:
        """The nodes written, from their namespaces (netlab-<lab>-node-<i>)."""
        return sorted(netns.split("-", 2)[2] for netns, _ in self.writes)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder()
    monkeypatch.setattr(engine_module, "nft_apply", fake)
    return fake


def test_only_nodes_whose_rules_change_are_written(recorder: Recorder) -> None:
    state: dict[str, list[JSONDict]] = {
        "policies": [],
        "pods": [pod("a", "node-1", "10.244.0.5"), pod("b", "node-2", "10.244.1.5")],
    }
    engine = PolicyEngine(
        LabSpec(name="t", nodes=3),
        lambda: (state["policies"], state["pods"], [NAMESPACE]),
    )

    async def scenario() -> None:
        await engine.sync()
        assert recorder.nodes() == ["node-1", "node-2", "node-3"]  # every table replaced
        assert all(
            doc.startswith("add table inet netlab-netpol\ndelete table")
            for _, doc in recorder.writes
        )
        recorder.writes.clear()
        await engine.sync()
        assert recorder.writes == []  # nothing changed, nothing written
        state["policies"] = [DENY]
        await engine.sync()
        # x/a lives on node-1: only node-1 isolates it.
        assert recorder.nodes() == ["node-1"]
        [(_, document)] = recorder.writes
        assert (
            "add element inet netlab-netpol ingress-pods/v4 { 10.244.0.5 : jump pod-ingress/x/a }"
            in document
        )
        assert "delete table" not in document
        assert engine.figures.syncs == 3
        assert engine.figures.writes == 4

    asyncio.run(scenario())


def test_a_failed_write_is_reported_and_the_node_replaced_whole_next_time(
    recorder: Recorder,
) -> None:
    state: dict[str, list[JSONDict]] = {"policies": [], "pods": [pod("a", "node-1", "10.244.0.5")]}
    engine = PolicyEngine(
        LabSpec(name="t", nodes=2), lambda: (state["policies"], state["pods"], [NAMESPACE])
    )

    async def scenario() -> None:
        await engine.sync()
        recorder.writes.clear()
        recorder.failing = {"netlab-t-node-1"}
        state["policies"] = [DENY]
        with pytest.raises(PolicyEngineError, match="boom"):
            await engine.sync()
        recorder.failing = set()
        await engine.sync()
        [(netns, document)] = recorder.writes
        assert netns == "netlab-t-node-1"
        assert document.startswith("add table inet netlab-netpol\ndelete table")

    asyncio.run(scenario())


def test_synced_waits_for_notified_changes(recorder: Recorder) -> None:
    state: dict[str, list[JSONDict]] = {"policies": [], "pods": [pod("a", "node-1", "10.244.0.5")]}
    engine = PolicyEngine(
        LabSpec(name="t", nodes=1), lambda: (state["policies"], state["pods"], [NAMESPACE])
    )

    async def scenario() -> None:
        await engine.start()
        try:
            state["policies"] = [DENY]
            engine.notify()
            await engine.synced(5)
            assert "pod-ingress/x/a" in engine.rule_sets()["node-1"].chains
        finally:
            await engine.stop()

    asyncio.run(scenario())
