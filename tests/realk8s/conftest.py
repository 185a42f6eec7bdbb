"""Fixtures of the genuine-cluster tier: one genuine Kubernetes cluster for the whole session
(installed if needed, brought up fresh, taken down at the end whatever happened, checked for
leftovers), a least-privilege kubeconfig, and the record of what each case proved, written into
``docs/`` when ``$NETCONFORM_REALK8S_DOC`` names the tier's page (``tests/support/proof_docs.py``).

Where there is no fixture (a user's fresh machine) the tier's module skips in one line, and
none of this runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_access import apply_manifest, kube_api, service_account_kubeconfig
from proof_docs import DOC_VARIABLE, Proof, write_docs
from realk8s import RealCluster, cluster, install, locate

ROOT = Path(__file__).resolve().parents[2]
NODES = 3
SERVICE_ACCOUNT = ("default", "k8s-netconform")  # manifests/rbac.yaml


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realk8s: runs against the genuine Kubernetes fixture (../shared/realk8s, or "
        "$NETCONFORM_REALK8S); deselect with -m 'not realk8s'",
    )


@pytest.fixture(scope="session")
def proof() -> Iterator[Proof]:
    """What the tier's cases proved; written into docs/ at the end when asked for."""
    record = Proof()
    yield record
    doc = os.environ.get(DOC_VARIABLE)
    if doc and record.cases:
        write_docs(record, Path(doc))


@pytest.fixture(scope="session")
def genuine_cluster(proof: Proof) -> Iterator[RealCluster]:
    """A fresh 3-node genuine cluster for the session (its kubelets are young when the first
    case starts); down at the end, also on a failure or Ctrl-C, and nothing left of it."""
    fixture, why = locate()
    if fixture is None:
        pytest.skip(why)
    proof.install_seconds = install(fixture)
    with cluster(fixture, NODES) as running:
        proof.up_seconds = running.up_seconds
        yield running


@pytest.fixture(scope="session")
def least_privilege(genuine_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding only the token of ``manifests/rbac.yaml``'s ServiceAccount (the
    manifest applied as README "Permissions" says)."""
    with kube_api(genuine_cluster.kubeconfig) as api:
        apply_manifest(api, ROOT / "manifests" / "rbac.yaml")
    namespace, name = SERVICE_ACCOUNT
    path = tmp_path_factory.mktemp("rbac") / "kubeconfig"
    return service_account_kubeconfig(genuine_cluster.kubeconfig, namespace, name, path)
