"""Runs that share a cluster, on a 3-node lab: three runs of the suite at once, each with
``--cleanup-stale``, all pass and none deletes another's namespace; a run killed with SIGKILL
is swept by the next run once its lease has expired, and nothing is left behind (the scenario:
``tests/support/concurrent_runs.py``, which the genuine-cluster tier runs too).

Labs are named ``$NETLAB_TEST_LAB_PREFIX`` (default ``tm``) + 6 hex digits, as every lab of
``labrun``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from concurrent_runs import three_runs_and_a_killed_one
from labrun import LabCase, running_lab

pytestmark = pytest.mark.needs_lab


def test_three_runs_at_once_and_a_killed_run_swept_after_its_lease(tmp_path: Path) -> None:
    with running_lab(LabCase()) as (_lab, kubeconfig):
        three_runs_and_a_killed_one(kubeconfig, tmp_path)
