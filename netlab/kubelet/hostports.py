"""hostPort admission, as kubelet's admission handler runs the scheduler's NodePorts filter
on the pods already admitted to its node (lifecycle/predicate.go): a pod asking for a host
port (protocol, port and host IP; 0.0.0.0 overlaps every IP) that an admitted pod holds is
rejected, with the reason ``NodePorts`` and the predicate's message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

WILDCARD = "0.0.0.0"
REJECT_REASON = "NodePorts"
REJECT_MESSAGE = (
    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
)
HostPort = tuple[str, str, int]  # (host IP, protocol, port)


def host_ports(pod: Mapping[str, Any]) -> list[HostPort]:
    """The host ports a pod's containers ask for (a hostNetwork pod's container ports are
    host ports too, as the API defaults hostPort to containerPort for them)."""
    spec = pod.get("spec") or {}
    host_network = bool(spec.get("hostNetwork"))
    wanted = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("hostPort") or (port.get("containerPort") if host_network else 0)
            if number:
                wanted.append(
                    (
                        str(port.get("hostIP") or WILDCARD),
                        str(port.get("protocol") or "TCP"),
                        int(number),
                    )
                )
    return wanted


def _overlaps(a: HostPort, b: HostPort) -> bool:
    """HostPortInfo.CheckConflict: same protocol and port, and the IPs equal or a wildcard."""
    return a[1:] == b[1:] and (a[0] == b[0] or WILDCARD in (a[0], b[0]))


def host_port_conflict(
    pod: Mapping[str, Any], admitted: Iterable[Mapping[str, Any]]
) -> tuple[str, str] | None:
    """(reason, message) when ``pod`` cannot be admitted next to the ``admitted`` pods, else
    None."""
    wanted = host_ports(pod)
    if not wanted:
        return None
    held = [port for other in admitted for port in host_ports(other)]
    if any(_overlaps(mine, theirs) for mine in wanted for theirs in held):
        return REJECT_REASON, REJECT_MESSAGE
    return None
