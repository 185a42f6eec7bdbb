"""Fixtures of the unit tests: for the runs of the plugin in-process with pytester, and the
real probe agent served by local processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis_profile  # noqa: F401  (no deadline per example)
import pytest
from local_agents import LocalAgent, serving_agents
from running_agents import workdir  # noqa: F401  (the agent tests' shared fixture)

from conformance.kit.probes import client as probe_client


@pytest.fixture(scope="module")
def kubernetes_client_fully_imported() -> None:
    # An in-process pytester run unloads, when it ends, every module it imported: among them
    # the kubernetes client's lazily imported models and APIs. Later tests in this process
    # would then hold two classes for one model (pydantic refuses a V1ConfigMap as "not a
    # V1ConfigMap"). Importing the whole client first keeps it out of pytester's reach.
    import kubernetes.client

    for name in dir(kubernetes.client):
        getattr(kubernetes.client, name)


@pytest.fixture
def no_ambient_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The runs must never find a real kubeconfig of the machine."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def local_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, LocalAgent]]:
    """Agents "a" and "b" serving on this machine (as two containers of one pod), reached
    through `LocalProbeClient`: the client's control-socket paths point at them."""
    monkeypatch.setattr(probe_client, "agent_socket", lambda c: str(tmp_path / f"{c}.sock"))
    with serving_agents(tmp_path, ("a", "b")) as agents:
        yield agents
