"""The probe agent: the one program run inside every probe container (``agent.py``), and its
client (``client.py``: ``call`` and ``ping``, which every exec and startup probe runs).

It is not part of the kit: it runs on the probe image's own ``python3`` (3.8 or newer), imports
only the standard library at import time (scapy lazily, for captures) and nothing of ours. The
kit ships its source to the pods in a ConfigMap (`agent_source`), and takes from here the pure
pieces of the protocol it must agree with: the digest of deterministic content
(`expected_sha256`), the default budget of a ``call`` (`call_budget`) and the agent's bounds.
"""

from __future__ import annotations

from pathlib import Path

from conformance.probe_agent.agent import (
    MAX_BATCH_REQUESTS,
    MAX_CONTROL_BYTES,
    MAX_PACKETS_PER_PREFIX_CAPTURE,
    MAX_PARALLEL,
    MAX_TRANSFER_BYTES,
    call_budget,
    expected_sha256,
)

__all__ = [
    "AGENT_FILE",
    "CLIENT_FILE",
    "MAX_BATCH_REQUESTS",
    "MAX_CONTROL_BYTES",
    "MAX_PACKETS_PER_PREFIX_CAPTURE",
    "MAX_PARALLEL",
    "MAX_TRANSFER_BYTES",
    "agent_source",
    "call_budget",
    "client_source",
    "expected_sha256",
]

#: The agent program, shipped as the ConfigMap key ``agent.py``.
AGENT_FILE = Path(__file__).with_name("agent.py")
#: Its client, shipped beside it as the ConfigMap key ``client.py``.
CLIENT_FILE = Path(__file__).with_name("client.py")


def agent_source() -> str:
    """The agent program's source text."""
    return AGENT_FILE.read_text()


def client_source() -> str:
    """The agent client's source text."""
    return CLIENT_FILE.read_text()
