"""The upstream network e2e passes against netlab, as it does on a genuine cluster: upstream
v1.28.4's [sig-network] Networking Granular Checks for pods (intra-pod and node-pod, http and
udp; Conformance), run by their own ginkgo binary (``netpeer.test``) against a 3-node lab that
imports the agnhost image they ask for (``netlab up --image``).

The binary and agnhost come from the genuine-cluster fixture (``../shared/realk8s/``, or
``$NETCONFORM_REALK8S``); where it is absent the module is skipped, saying so. client-go 1.28
speaks protobuf unless told otherwise, so the peer runs with
``--kube-api-content-type=application/json`` (the lab answers protobuf with kube-apiserver's
415). Bounded: ginkgo gets 300 s, the process group is killed 60 s later, the lab is torn down
and checked empty whatever happened. The lab is named ``$NETLAB_TEST_LAB_PREFIX`` (default
``tm``) + 6 hex digits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from labrun import LabCase, running_lab
from peer import (
    GRANULAR_POD_CHECKS,
    agnhost_archive,
    peer_tarball_or_skip,
    run_peer,
    unpack_peer,
)

pytestmark = pytest.mark.needs_lab
TARBALL = peer_tarball_or_skip()

PEER_TIMEOUT = 300  # ginkgo's own suite timeout; the genuine cluster needs 70 s, a lab ~70 s
# The four specs, by the names ginkgo reports.
_PODS = "[sig-network] Networking Granular Checks: Pods should function for"
EXPECTED = {
    f"{_PODS} intra-pod communication: http [NodeConformance] [Conformance]",
    f"{_PODS} intra-pod communication: udp [NodeConformance] [Conformance]",
    f"{_PODS} node-pod communication: http [LinuxOnly] [NodeConformance] [Conformance]",
    f"{_PODS} node-pod communication: udp [LinuxOnly] [NodeConformance] [Conformance]",
}


def test_upstream_pod_granular_checks_pass_against_a_lab(tmp_path: Path) -> None:
    """MUST: the four upstream pod Granular Checks pass against a healthy 3-node lab."""
    peer = unpack_peer(TARBALL, tmp_path / "peer")
    archive = agnhost_archive(peer, tmp_path / "image")
    started = time.monotonic()
    with running_lab(LabCase(images=(archive,))) as (_, kubeconfig):
        run = run_peer(
            peer, kubeconfig, tmp_path / "report", focus=GRANULAR_POD_CHECKS, timeout=PEER_TIMEOUT
        )
    # Figures, not assertions (a shared machine): the peer's own time and the whole test's.
    print(
        f"netpeer.test ran for {run.seconds:.0f} s; lab and peer {time.monotonic() - started:.0f} s"
    )
    ran = {spec.name: spec.state for spec in run.ran()}
    assert set(ran) == EXPECTED, run.summary()
    assert set(ran.values()) == {"passed"}, run.summary()
    assert run.returncode == 0, run.summary()
