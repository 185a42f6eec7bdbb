"""The probe agent: the one program run inside every probe container (``agent.py``).

It is not part of the kit: it runs on the probe image's own ``python3``, imports only the
standard library at import time (scapy lazily, for captures) and nothing of ours. The kit ships
its source to the pods in a ConfigMap (`agent_source`).
"""

from __future__ import annotations

from pathlib import Path

#: The agent program, shipped as the ConfigMap key ``agent.py``.
AGENT_FILE = Path(__file__).with_name("agent.py")


def agent_source() -> str:
    """The agent program's source text."""
    return AGENT_FILE.read_text()
