#!/usr/bin/env python3
"""The netconform probe agent: the program run in every probe container (``agent.py serve``).

It is this directory's modules, shipped to pods side by side in ConfigMap ``netconform-agent``
(one key per file, mounted together at ``/netconform``) and run with the probe image's own
``python3``. **The oldest Python it supports is 3.8** (checked with ``vermin -t=3.8-``, which
knows library APIs, over every module in tests/unit/test_probe_agent.py), so it imports only
the standard library at import time. scapy is imported lazily, once, by the ``serve`` process,
and only for packet captures.

Subcommand (see docs/architecture.md, "The probe agent protocol"):

``serve``
    Long-running. TCP and UDP listeners on every address of the pod (IPv4 and IPv6 where the
    kernel has it; port 0 picks a free port, reported by ``info``), raw ICMP/ICMPv6 sockets
    recording echo requests, and a control unix socket taking JSON requests. File requests
    are served only inside the ``--data-dir`` directories. Logs one line per request on stderr
    (the container log).
    With ``--edge-control ADDR:PORT`` it is also the edge server on a host outside the
    cluster: a TCP control listener on ADDR taking only ``info`` and ``connect`` to the
    addresses ``--allow-connect`` names (the suite's NodePort-from-outside checks).

Its client, ``client.py`` beside it (``call`` and ``ping``), talks to the control socket: a
small program of its own, importing none of these modules, because every exec of the suite
starts one.

Every response holds ``ok`` and ``op``; when ``ok`` is false it holds ``error`` (text for a
person) and, when the failure came from the kernel, ``errno`` (its name, e.g. ``ETIMEDOUT``).

The modules, from the entry down (`MODULES`; at run time each imports only modules after
it, a unit test keeps it so):

- ``serve``: the command line and the serve process (listeners, control sockets, SIGTERM);
- ``control``: batches on the control socket;
- ``dispatch``: the `Agent`, one request to one response by op;
- ``edge``: the edge server's control listener, and ``relay`` to it;
- ``captures``, ``files``, ``measured``, ``services``, ``listeners``, ``exchanges``: the ops'
  work, by concern;
- ``netinfo``: addresses, interfaces, routes, MTUs;
- ``protocol``: bounds, request fields, nonces, deterministic content, a call's time budget
  (all the kit imports).

In the repository they are the package ``conformance.probe_agent``; shipped, they are files in
one directory with no package around them, so run as a script this file makes that directory
the package `SHIPPED_PACKAGE` (the modules import their siblings relatively, either way).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The package name of the agent's modules when this file runs as a script from a directory
#: of plain files (a pod's ConfigMap mount, a copy on the edge server's host).
SHIPPED_PACKAGE = "netconform_agent"
#: The agent's modules beside this file, from the entry down.
MODULES = (
    "serve",
    "control",
    "dispatch",
    "edge",
    "captures",
    "files",
    "measured",
    "services",
    "listeners",
    "exchanges",
    "netinfo",
    "protocol",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent's command line (``serve ...``; default: ``sys.argv``); its exit status."""
    serve = importlib.import_module(".serve", _package())
    status: int = serve.main(argv)
    return status


def _package() -> str:
    """The package the agent's modules are imported from: the one around this module, or,
    run as a script, this file's directory made the package `SHIPPED_PACKAGE`."""
    if __package__:
        return __package__
    if SHIPPED_PACKAGE not in sys.modules:
        package = types.ModuleType(SHIPPED_PACKAGE, "the probe agent's modules")
        package.__path__ = [os.path.dirname(os.path.abspath(__file__))]
        sys.modules[SHIPPED_PACKAGE] = package
    return SHIPPED_PACKAGE


if __name__ == "__main__":
    sys.exit(main())
