"""What the machine's root network namespace holds (links, addresses, routes, iptables rules,
forwarding sysctls), to prove a lab leaves it untouched, and which of its addresses and routes
fall in the lab's networks (there must be none)."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

LAB_NETWORKS = [ipaddress.ip_network("172.18.0.0/16"), ipaddress.ip_network("10.244.0.0/16")]
ROOT_SYSCTLS = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
]


def root_namespace_view() -> dict[str, Any]:
    """Links, addresses, routes, iptables rules and forwarding sysctls of the root netns."""
    with IPRoute() as root:
        links = sorted((link["index"], link.get("ifname")) for link in root.get_links())
        addresses = sorted(
            (address["index"], f"{address.get('address')}/{address['prefixlen']}")
            for address in root.get_addr()
        )
        routes = sorted(
            (
                route.get("table"),
                str(route.get("dst")),
                route["dst_len"],
                str(route.get("gateway")),
                route.get("oif"),
            )
            for family in (2, 10)  # AF_INET, AF_INET6
            for route in root.get_routes(family=family, table=0)
        )
    iptables = subprocess.run(
        ["iptables-save"], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    rules = [line for line in iptables.splitlines() if not line.startswith("#")]
    sysctls = {path: Path(path).read_text().strip() for path in ROOT_SYSCTLS}
    return {
        "links": links,
        "addresses": addresses,
        "routes": routes,
        "iptables": rules,
        "sysctls": sysctls,
    }


def lab_addresses_in(view: dict[str, Any]) -> list[str]:
    found = []
    for _, address in view["addresses"]:
        interface = ipaddress.ip_interface(address)
        if any(interface.ip in network for network in LAB_NETWORKS):
            found.append(address)
    for route in view["routes"]:
        if route[1] != "None" and any(
            ipaddress.ip_address(route[1]) in network for network in LAB_NETWORKS
        ):
            found.append(f"route {route[1]}/{route[2]}")
    return found
