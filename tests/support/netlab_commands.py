"""The ``netlab`` command as the lab and end-to-end tests run it: one call in a subprocess, and
a whole lab booted for the length of a ``with`` block."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def netlab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m netlab ARGS`` from ``/`` (so nothing of the working directory leaks in);
    its output captured as text, its exit code returned, not raised."""
    return subprocess.run(
        [sys.executable, "-m", "netlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )


@contextmanager
def booted_lab(name: str, *options: str) -> Iterator[Path]:
    """``netlab up --name NAME OPTIONS``, which must succeed: yields the lab's kubeconfig (the
    last line ``up`` prints); ``netlab down`` afterwards, which must succeed too."""
    up = netlab("up", "--name", name, *options)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield Path(up.stdout.strip().splitlines()[-1])
    finally:
        down = netlab("down", "--name", name)
        assert down.returncode == 0, down.stderr[-2000:]
