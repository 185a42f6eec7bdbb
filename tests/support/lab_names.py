"""Names for the labs the lab tests boot, and what a lab left behind.

Lab names made here start with ``ta`` (or ``$NETLAB_TEST_LAB_PREFIX``, two letters) so that
other engineers' concurrent lab tests (other prefixes) never collide with these.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from netlab.spec import STATE_ROOT

TEST_LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "ta")
LAB_OF_NETNS = re.compile(r"^netlab-(.+)-(fabric|outside|node-[0-9]+|pod-.+)$")


def new_lab_name() -> str:
    """``ta`` + 6 random characters: unique per call, valid, and never a prefix clash."""
    return TEST_LAB_PREFIX + secrets.token_hex(3)


def leftovers(lab_prefix: str, state_root: Path = STATE_ROOT) -> list[str]:
    """Namespaces and state dirs of every lab whose name starts with ``lab_prefix``."""
    found = [name for name in pyroute2_netns.listnetns() if name.startswith(f"netlab-{lab_prefix}")]
    if state_root.is_dir():
        found += [str(path) for path in state_root.iterdir() if path.name.startswith(lab_prefix)]
    return sorted(found)
