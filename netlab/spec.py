"""What a lab is: its size, address plan, faults and where it keeps its state.

Everything else in netlab derives names and addresses from a ``LabSpec``, so that `netlab down`
can find every namespace, runc container and mount a lab made even after its daemon died.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

STATE_ROOT = Path("/run/netlab")

# Files in a lab's state dir (STATE_ROOT/NAME): the daemon writes them; the CLI,
# `netlab down` and `netlab api-faults` read them.
PID_FILE = "daemon.pid"
READY_FILE = "ready"
FAILED_FILE = "failed"
LOG_FILE = "lab.log"
INFO_FILE = "info.json"
KUBECONFIG_FILE = "kubeconfig"
LAB_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")
# `netlab up --ip-family`: which families pods, nodes and services get (dual: IPv4 primary).
IP_FAMILIES: dict[str, tuple[int, ...]] = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}


class LabSpecError(ValueError):
    """A lab specification that cannot be built; the message is one line for the user."""


def ip_version(address: str) -> int | None:
    """4 or 6 for an IP literal, None for anything else."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


@dataclass(frozen=True)
class NodePlan:
    """One node of the lab: API name, network namespace, address on the fabric, podCIDRs."""

    index: int  # 1-based
    name: str  # API node name, e.g. "node-1"
    netns: str  # e.g. "netlab-default-node-1"
    internal_ip: str  # primary node address on the fabric, e.g. "172.18.0.2"
    pod_cidrs: tuple[str, ...]  # as the API reports them (spec.podCIDRs), primary family first
    internal_ips: tuple[str, ...] = ()  # one per family, primary first (internal_ip is [0])


@dataclass(frozen=True)
class LabSpec:
    """A lab's specification. Validated on construction; every derived name is stable."""

    name: str = "default"
    nodes: int = 3
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_cidr_prefix: int = 24
    fabric_cidr: str = "172.18.0.0/16"
    ip_family: str = "ipv4"
    # IPv6 counterparts, used when ip_family is "ipv6" or "dual" (ULA ranges, like kind's).
    cluster_cidr_v6: str = "fd00:10:244::/56"
    service_cidr_v6: str = "fd00:10:96::/112"
    node_cidr_prefix_v6: int = 64
    fabric_cidr_v6: str = "fd00:172:18::/64"
    faults: frozenset[str] = field(default_factory=frozenset)
    # Control-plane faults, `NAME[=VALUE]` as `--api-fault` takes them (netlab.api.faults).
    api_faults: tuple[str, ...] = ()
    # NetworkPolicies enforced on every node (`netlab up --no-network-policy`: served by the
    # API but never enforced, as on a cluster whose CNI does not implement them).
    network_policy: bool = True
    state_root: Path = STATE_ROOT
    # OCI image archives whose files the lab's containers of those images see over the host's
    # (netlab.dataplane.images); absolute paths.
    images: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not LAB_NAME_PATTERN.match(self.name):
            raise LabSpecError(
                f"lab name {self.name!r} must be 1-12 lowercase letters, digits or '-'"
            )
        if self.ip_family not in IP_FAMILIES:
            raise LabSpecError(
                f"IP family {self.ip_family!r} is not one of {', '.join(IP_FAMILIES)}"
            )
        if self.nodes < 1:
            raise LabSpecError(f"a lab needs at least 1 node, got {self.nodes}")
        for version in (4, 6):
            self._check_ranges(version)
        from netlab.faults import FAULTS  # local: faults.py imports nothing from here at load

        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise LabSpecError(
                f"unknown fault {', '.join(unknown)}; `netlab faults` lists the known ones"
            )
        if not self.network_policy:
            policy_faults = sorted(f for f in self.faults if f.startswith("netpol-"))
            if policy_faults:
                raise LabSpecError(
                    f"fault {', '.join(policy_faults)} needs the NetworkPolicy engine "
                    "(drop --no-network-policy)"
                )
        from netlab.api.faults import ApiFaultError, parse_api_faults

        try:
            parse_api_faults(self.api_faults)
        except ApiFaultError as error:
            raise LabSpecError(str(error)) from None

    def _ranges(self, version: int) -> tuple[str, str, int, str]:
        """(cluster CIDR, service CIDR, node CIDR prefix, fabric CIDR) of one IP version."""
        if version == 4:
            return self.cluster_cidr, self.service_cidr, self.node_cidr_prefix, self.fabric_cidr
        return (
            self.cluster_cidr_v6,
            self.service_cidr_v6,
            self.node_cidr_prefix_v6,
            self.fabric_cidr_v6,
        )

    def _check_ranges(self, version: int) -> None:
        cluster_text, service_text, prefix, fabric_text = self._ranges(version)
        try:
            networks = [ipaddress.ip_network(t) for t in (cluster_text, service_text, fabric_text)]
        except ValueError as error:
            raise LabSpecError(f"bad CIDR: {error}") from None
        if any(network.version != version for network in networks):
            raise LabSpecError(
                f"the IPv{version} ranges {cluster_text}, {service_text}, {fabric_text} "
                f"must all be IPv{version}"
            )
        cluster, _, fabric = networks
        if prefix <= cluster.prefixlen or prefix > cluster.max_prefixlen - 2:
            raise LabSpecError(f"node CIDR prefix /{prefix} does not fit in cluster CIDR {cluster}")
        if 2 ** min(prefix - cluster.prefixlen, 32) < self.nodes:
            raise LabSpecError(f"cluster CIDR {cluster} has room for fewer than {self.nodes} nodes")
        # The network's own address, the gateway (.1), the outside host (the last) and, for
        # IPv4, broadcast: the rest is the nodes'.
        if fabric.num_addresses - 4 < self.nodes:
            raise LabSpecError(f"fabric CIDR {fabric} has room for fewer than {self.nodes} nodes")

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions of the lab, primary first: (4,), (6,) or (4, 6)."""
        return IP_FAMILIES[self.ip_family]

    @property
    def service_cidrs(self) -> tuple[str, ...]:
        """The service ranges, one per family, primary first."""
        return tuple(self._ranges(version)[1] for version in self.families)

    @property
    def cluster_cidrs(self) -> tuple[str, ...]:
        """The pod ranges, one per family, primary first."""
        return tuple(self._ranges(version)[0] for version in self.families)

    @property
    def state_dir(self) -> Path:
        """Everything the lab writes on disk lives under here (removed by `netlab down`)."""
        return self.state_root / self.name

    @property
    def netns_prefix(self) -> str:
        """Every network namespace this lab creates starts with this prefix."""
        return f"netlab-{self.name}-"

    @property
    def fabric_netns(self) -> str:
        return f"{self.netns_prefix}fabric"

    @property
    def fabric_gateway(self) -> str:
        """The fabric bridge's own address of the primary family (.1, like kind's gateway)."""
        return self.fabric_gateways[0]

    @property
    def fabric_gateways(self) -> tuple[str, ...]:
        """The fabric bridge's own addresses, one per family, primary first."""
        return tuple(
            str(next(ipaddress.ip_network(self._ranges(v)[3]).hosts())) for v in self.families
        )

    @property
    def outside_netns(self) -> str:
        """The namespace of the host outside every node (`netlab.dataplane.outside`)."""
        return f"{self.netns_prefix}outside"

    @property
    def outside_addresses(self) -> tuple[str, ...]:
        """The outside host's addresses on the fabric, one per family, primary first: each
        fabric range's last usable address (nodes count up from .2)."""
        return tuple(str(ipaddress.ip_network(self._ranges(v)[3])[-2]) for v in self.families)

    def node_plans(self) -> list[NodePlan]:
        """The nodes, in order: names node-1..N, fabric IPs .2, .3, ... and one podCIDR each,
        per family (primary family first)."""
        subnets = []
        fabric_hosts = []
        for version in self.families:
            cluster, _, prefix, fabric = self._ranges(version)
            subnets.append(ipaddress.ip_network(cluster).subnets(new_prefix=prefix))
            hosts = ipaddress.ip_network(fabric).hosts()
            next(hosts)  # .1 is the fabric gateway
            fabric_hosts.append(hosts)
        plans = []
        for index in range(1, self.nodes + 1):
            internal_ips = tuple(str(next(hosts)) for hosts in fabric_hosts)
            plans.append(
                NodePlan(
                    index=index,
                    name=f"node-{index}",
                    netns=f"{self.netns_prefix}node-{index}",
                    internal_ip=internal_ips[0],
                    pod_cidrs=tuple(str(next(cidrs)) for cidrs in subnets),
                    internal_ips=internal_ips,
                )
            )
        return plans
