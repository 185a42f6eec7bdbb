"""Fixtures for the unit tests that run the plugin in-process with pytester."""

from __future__ import annotations

from pathlib import Path

import pytest


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
