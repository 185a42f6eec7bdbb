"""The set-up is idempotent: run again (as root: it installs Debian packages), it changes
nothing and says what it skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.needs_root("set-up installs Debian packages")


def test_second_setup_changes_nothing_and_says_what_it_skipped() -> None:
    # The test command ran set-up already, so this run must skip every step.
    result = subprocess.run(
        [str(ROOT / "run.sh"), "setup"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("setup:")]
    assert lines, f"set-up printed nothing: {result.stderr!r}"
    not_skipped = [line for line in lines if not line.startswith("setup: skip")]
    assert not not_skipped, f"a second set-up did work again: {not_skipped}"
    assert any("pip install" in line for line in lines)
    assert any("runc" in line for line in lines)
