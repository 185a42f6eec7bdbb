"""The two-command set-up: idempotent, and CI runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The commands of the README's first shell block (the two set-up commands)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no ```sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_shows_exactly_two_setup_commands() -> None:
    commands = readme_commands()
    assert commands == ["./run.sh conformance", "./run.sh test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert readme_commands()[1] in ci_lines


@pytest.mark.skipif(os.geteuid() != 0, reason="set-up installs Debian packages: needs root")
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
