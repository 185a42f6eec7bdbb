"""A pytest plugin for the suite's own run (``-p psa_baseline_namespace``): the run namespace
is labelled ``pod-security.kubernetes.io/enforce=baseline`` instead of ``privileged``, as when a
cluster policy overrides the label the suite asks for (or strips it under a baseline default)."""

from __future__ import annotations

import pytest

from conformance.kit.cluster import namespace


def pytest_configure(config: pytest.Config) -> None:
    namespace.POD_SECURITY_LABELS["pod-security.kubernetes.io/enforce"] = "baseline"
