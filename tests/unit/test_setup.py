"""The two-command set-up: CI runs exactly the README's test command (a second set-up that
changes nothing, as root: ``tests/lab/test_setup_again.py``)."""

from __future__ import annotations

import re
from pathlib import Path

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
