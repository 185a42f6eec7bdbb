"""The probe agent: the program run inside every probe container (``agent.py`` and the modules
beside it), and its client (``client.py``: ``call`` and ``ping``, which every exec and startup
probe runs).

It is not part of the kit: it runs on the probe image's own ``python3`` (3.8 or newer), imports
only the standard library at import time (scapy lazily, for captures) and nothing of ours. The
kit ships this directory's files to the pods in a ConfigMap, one key per file (`agent_files`),
and takes from `protocol` alone the pieces it must agree with: the digest of deterministic
content (`expected_sha256`), the default budget of a ``call`` (`call_budget`) and the agent's
bounds. Importing this package imports only that module.
"""

from __future__ import annotations

from pathlib import Path

from .protocol import (
    MAX_BATCH_REQUESTS,
    MAX_CONTROL_BYTES,
    MAX_PACKETS_PER_PREFIX_CAPTURE,
    MAX_PARALLEL,
    MAX_TRANSFER_BYTES,
    call_budget,
    expected_sha256,
)

__all__ = [
    "AGENT_DIRECTORY",
    "AGENT_FILE",
    "CLIENT_FILE",
    "MAX_BATCH_REQUESTS",
    "MAX_CONTROL_BYTES",
    "MAX_PACKETS_PER_PREFIX_CAPTURE",
    "MAX_PARALLEL",
    "MAX_TRANSFER_BYTES",
    "agent_files",
    "call_budget",
    "expected_sha256",
]

#: The agent's directory: every ``*.py`` file in it is shipped (``kubectl create configmap
#: --from-file=`` this directory makes the same ConfigMap).
AGENT_DIRECTORY = Path(__file__).parent
#: The agent's entry point (``python3 agent.py serve ...``), in that directory.
AGENT_FILE = AGENT_DIRECTORY / "agent.py"
#: Its client, beside it.
CLIENT_FILE = AGENT_DIRECTORY / "client.py"


def agent_files() -> dict[str, str]:
    """The shipped files, by name (one ConfigMap key each): the directory's ``*.py`` files.
    ``__init__.py`` goes along, harmless: run from a plain directory, the agent never imports
    it (see `agent._package`)."""
    return {path.name: path.read_text() for path in sorted(AGENT_DIRECTORY.glob("*.py"))}
