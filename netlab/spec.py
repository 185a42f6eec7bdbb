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
LAB_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")


class LabSpecError(ValueError):
    """A lab specification that cannot be built; the message is one line for the user."""


@dataclass(frozen=True)
class NodePlan:
    """One node of the lab: API name, network namespace, address on the fabric, podCIDRs."""

    index: int  # 1-based
    name: str  # API node name, e.g. "node-1"
    netns: str  # e.g. "netlab-default-node-1"
    internal_ip: str  # node address on the fabric, e.g. "172.18.0.2"
    pod_cidrs: tuple[str, ...]  # as the API reports them (spec.podCIDRs)


@dataclass(frozen=True)
class LabSpec:
    """A lab's specification. Validated on construction; every derived name is stable."""

    name: str = "default"
    nodes: int = 3
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    node_cidr_prefix: int = 24
    fabric_cidr: str = "172.18.0.0/16"
    faults: frozenset[str] = field(default_factory=frozenset)
    state_root: Path = STATE_ROOT

    def __post_init__(self) -> None:
        if not LAB_NAME_PATTERN.match(self.name):
            raise LabSpecError(
                f"lab name {self.name!r} must be 1-12 lowercase letters, digits or '-'"
            )
        if self.nodes < 1:
            raise LabSpecError(f"a lab needs at least 1 node, got {self.nodes}")
        try:
            cluster = ipaddress.ip_network(self.cluster_cidr)
            ipaddress.ip_network(self.service_cidr)
            fabric = ipaddress.ip_network(self.fabric_cidr)
        except ValueError as error:
            raise LabSpecError(f"bad CIDR: {error}") from None
        if (
            self.node_cidr_prefix <= cluster.prefixlen
            or self.node_cidr_prefix > cluster.max_prefixlen - 2
        ):
            raise LabSpecError(
                f"node CIDR prefix /{self.node_cidr_prefix} does not fit in cluster CIDR {cluster}"
            )
        if 2 ** (self.node_cidr_prefix - cluster.prefixlen) < self.nodes:
            raise LabSpecError(f"cluster CIDR {cluster} has room for fewer than {self.nodes} nodes")
        if fabric.num_addresses - 3 < self.nodes:
            raise LabSpecError(f"fabric CIDR {fabric} has room for fewer than {self.nodes} nodes")
        from netlab.faults import FAULTS  # local: faults.py imports nothing from here at load

        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise LabSpecError(
                f"unknown fault {', '.join(unknown)}; `netlab faults` lists the known ones"
            )

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
        """The fabric bridge's own address (like kind's docker network gateway, .1)."""
        return str(next(ipaddress.ip_network(self.fabric_cidr).hosts()))

    def node_plans(self) -> list[NodePlan]:
        """The nodes, in order: names node-1..N, fabric IPs .2, .3, ..., one podCIDR each."""
        cluster = ipaddress.ip_network(self.cluster_cidr)
        subnets = cluster.subnets(new_prefix=self.node_cidr_prefix)
        fabric_hosts = ipaddress.ip_network(self.fabric_cidr).hosts()
        next(fabric_hosts)  # .1 is the fabric gateway
        plans = []
        for index in range(1, self.nodes + 1):
            plans.append(
                NodePlan(
                    index=index,
                    name=f"node-{index}",
                    netns=f"{self.netns_prefix}node-{index}",
                    internal_ip=str(next(fabric_hosts)),
                    pod_cidrs=(str(next(subnets)),),
                )
            )
        return plans
