"""The lab's network: a fabric namespace with one bridge, and one namespace per node.

Like kind on a docker network: every node has ``eth0`` on the fabric bridge (``br0`` in the
fabric namespace, gateway ``.1``), forwards IP, and reaches other nodes' pods by host-gw
routes (pod range via that node's fabric address), as kindnet does. Nothing is ever created in
the machine's root network namespace: veths are made inside the fabric namespace with their
peer placed straight into the node namespace.

IPv6 and dual-stack labs get the same per family: a fabric address of each family on ``br0``
and every ``eth0``, and host-gw routes of each family via the other node's address of that
family. Duplicate address detection is off in every lab namespace (there is nothing to
collide with), so IPv6 addresses are usable the moment they are added, as on kind's nodes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
import shutil
import socket
import subprocess
from functools import cache
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_TENTATIVE
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from netlab.contract import NodeInfo
from netlab.dataplane.nsexec import (
    create_netns,
    in_netns_thread,
    netns_exists,
    netns_path,
    remove_netns,
    write_sysctls,
    write_sysctls_here,
)
from netlab.spec import LabSpec, LabSpecError, NodePlan

log = logging.getLogger(__name__)

FABRIC_BRIDGE = "br0"
NODE_UPLINK = "eth0"  # a node's interface on the fabric

# No DAD in lab namespaces: written before any link exists, so every link made afterwards
# (eth0, cni0, the CNI veths) inherits "default"; "all" covers the kernel's either-or check.
NO_DAD_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
NODE_SYSCTLS = {
    **NO_DAD_SYSCTLS,
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    # Same-node pod traffic crosses the CNI bridge; iptables must see it (as kube-proxy
    # requires), both for the faults that act on it and to look like a real node.
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}

ARCH_LABELS = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}

OVERLAP_FAULT = "overlapping-pod-cidrs"
OUTSIDE_FAULT = "ip-outside-node-cidr"
FAMILY_MISSING_FAULT = "family-missing-on-node"
NETWORK_NOT_READY_FAULT = "network-not-ready-on-node"
#: kubelet's network error when the runtime's NetworkReady condition is false, with the
#: condition containerd reports while no CNI config is loaded (kubelet.go updateRuntimeUp).
NETWORK_NOT_READY_ERROR = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni plugin not initialized"
)
# Faults that act on node-2, or on a pair of nodes: a 1-node lab cannot carry them.
TWO_NODE_FAULTS = (
    OVERLAP_FAULT,
    "one-way-pair-drop",
    "host-to-remote-pods-blocked",
    "pmtu-blackhole",
    FAMILY_MISSING_FAULT,
    NETWORK_NOT_READY_FAULT,
    "nodeport-missing-on-node",
    "hostport-unmapped",
    "netpol-ignored-on-node",
    "edge-egress-blocked",
    "edge-nodeport-blocked",
    "edge-no-masquerade",
    "lossy-pair",
)
ADDRESS_SETTLE_TIMEOUT = 5.0  # seconds for a node's IPv6 addresses to leave "tentative"


class TopologyError(RuntimeError):
    """The lab network could not be built (everything made so far was removed)."""


# --- address plan (pure) -----------------------------------------------------------------------


def _node_prefix(spec: LabSpec, version: int) -> int:
    return spec.node_cidr_prefix if version == 4 else spec.node_cidr_prefix_v6


def _fabric_network(spec: LabSpec, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(spec.fabric_cidr if version == 4 else spec.fabric_cidr_v6)


def _version(cidr_or_address: str) -> int:
    return ipaddress.ip_interface(cidr_or_address).version


def check_topology_faults(spec: LabSpec) -> None:
    """Raise LabSpecError (one line) when a fault cannot be built on a lab of this shape."""
    for fault in TWO_NODE_FAULTS:
        if fault in spec.faults and spec.nodes < 2:
            raise LabSpecError(f"fault {fault} needs at least 2 nodes")
    if FAMILY_MISSING_FAULT in spec.faults and spec.ip_family != "dual":
        raise LabSpecError(
            f"fault {FAMILY_MISSING_FAULT} needs a dual-stack lab (--ip-family dual), "
            f"not {spec.ip_family}"
        )
    if OUTSIDE_FAULT in spec.faults:
        for version, cluster_text in zip(spec.families, spec.cluster_cidrs, strict=True):
            cluster = ipaddress.ip_network(cluster_text)
            room = 2 ** min(_node_prefix(spec, version) - cluster.prefixlen, 32)
            if room < spec.nodes + 1:
                raise LabSpecError(
                    f"fault {OUTSIDE_FAULT} needs room for {spec.nodes + 1} node ranges "
                    f"in cluster CIDR {cluster}"
                )


def _outside_node(spec: LabSpec) -> NodePlan:
    """The node whose IPAM strays outside its podCIDR (the last one)."""
    return spec.node_plans()[-1]


def plan_ipam_ranges(spec: LabSpec) -> dict[str, list[str]]:
    """Node name -> the ranges its CNI IPAM hands out (and that routes lead to).

    Normally each node's podCIDRs (one per family, primary first). With
    ``ip-outside-node-cidr`` the last node hands out, in each family, the first unused
    node-sized subnet of that family's cluster CIDR, outside its published podCIDR.
    """
    check_topology_faults(spec)
    plans = spec.node_plans()
    ranges = {plan.name: list(plan.pod_cidrs) for plan in plans}
    if OUTSIDE_FAULT in spec.faults:
        unused_ranges = []
        for version, cluster_text in zip(spec.families, spec.cluster_cidrs, strict=True):
            subnets = ipaddress.ip_network(cluster_text).subnets(
                new_prefix=_node_prefix(spec, version)
            )
            unused = next(subnet for index, subnet in enumerate(subnets) if index == len(plans))
            unused_ranges.append(str(unused))
        ranges[_outside_node(spec).name] = unused_ranges
    return ranges


def published_pod_cidrs(spec: LabSpec) -> dict[str, tuple[str, ...]]:
    """Node name -> what the API shows as ``spec.podCIDRs``.

    Normally each node's podCIDRs. With ``overlapping-pod-cidrs`` node-2 publishes, in each
    family, the supernet that also covers node-1's range; IPAM and routes keep the disjoint real
    ranges, so pods stay unique and reachable and only the "podCIDRs do not overlap" rule breaks.
    """
    check_topology_faults(spec)
    plans = spec.node_plans()
    published = {plan.name: plan.pod_cidrs for plan in plans}
    if OVERLAP_FAULT in spec.faults:
        second = plans[1]
        published[second.name] = tuple(
            str(ipaddress.ip_network(real).supernet(prefixlen_diff=1)) for real in second.pod_cidrs
        )
    return published


def node_addresses(plan: NodePlan) -> tuple[str, ...]:
    """The node's fabric addresses, one per family, primary first."""
    return plan.internal_ips or (plan.internal_ip,)


def _address_of_version(addresses: tuple[str, ...], version: int) -> str:
    for address in addresses:
        if _version(address) == version:
            return address
    raise LabSpecError(f"no IPv{version} address among {', '.join(addresses)}")


def node_routes(spec: LabSpec, plan: NodePlan) -> list[tuple[str, str]]:
    """(destination range, gateway) host-gw routes ``plan``'s node needs to other nodes' pods;
    each range goes via the other node's fabric address of the same family."""
    ranges = plan_ipam_ranges(spec)
    return [
        (pod_range, _address_of_version(node_addresses(other), _version(pod_range)))
        for other in spec.node_plans()
        if other.name != plan.name
        for pod_range in ranges[other.name]
    ]


# --- node identity -----------------------------------------------------------------------------


@cache
def _os_image() -> str:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return "Linux"
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    return fields.get("PRETTY_NAME", "Linux").strip().strip('"')


@cache
def _runtime_version() -> str:
    runc = shutil.which("runc")
    if runc is None:
        return "runc://unknown"
    completed = subprocess.run(
        [runc, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = completed.stdout.splitlines()[0] if completed.stdout else ""
    # "runc version 1.1.5+ds1" -> "runc://1.1.5+ds1", the shape kubelet reports.
    return f"runc://{first.split()[-1]}" if first.startswith("runc version") else "runc://unknown"


def node_infos(spec: LabSpec) -> list[NodeInfo]:
    """What the API server publishes as the lab's v1 Nodes (podCIDRs as published)."""
    published = published_pod_cidrs(spec)
    machine = platform.machine()
    broken = NETWORK_NOT_READY_FAULT in spec.faults  # node-2's network plugin is not ready
    return [
        NodeInfo(
            name=plan.name,
            internal_ip=plan.internal_ip,
            internal_ips=node_addresses(plan),
            pod_cidrs=published[plan.name],
            labels={
                "kubernetes.io/hostname": plan.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": ARCH_LABELS.get(machine, machine),
                "node-role.kubernetes.io/worker": "",
            },
            kernel_version=platform.release(),
            os_image=_os_image(),
            container_runtime_version=_runtime_version(),
            network_errors=(NETWORK_NOT_READY_ERROR,) if plan.index == 2 and broken else (),
        )
        for plan in spec.node_plans()
    ]


# --- building ----------------------------------------------------------------------------------


def topology_netns_names(spec: LabSpec) -> list[str]:
    """The namespaces the topology owns (fabric first), in creation order."""
    return [spec.fabric_netns, *(plan.netns for plan in spec.node_plans())]


def interface_index(ipr: IPRoute, ifname: str) -> int:
    """The index of ``ifname`` in the namespace ``ipr`` speaks for."""
    indexes: list[int] = ipr.link_lookup(ifname=ifname)
    if not indexes:
        raise TopologyError(f"interface {ifname} vanished while building the lab")
    return indexes[0]


def _build_fabric(spec: LabSpec) -> None:
    in_netns_thread(spec.fabric_netns, lambda: _build_fabric_here(spec))


def _add_address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    """Add ``address``; IPv6 ones without DAD (``nodad``), so they are usable at once."""
    if _version(address) == 6:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)
    else:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def _build_fabric_here(spec: LabSpec) -> None:
    """Runs on a thread inside the fabric namespace (so IPRoute() talks to it, no fork)."""
    write_sysctls_here(NO_DAD_SYSCTLS)
    with IPRoute() as fabric:
        fabric.link("set", index=interface_index(fabric, "lo"), state="up")
        fabric.link("add", ifname=FABRIC_BRIDGE, kind="bridge")
        bridge = interface_index(fabric, FABRIC_BRIDGE)
        for version, gateway in zip(spec.families, spec.fabric_gateways, strict=True):
            _add_address(fabric, bridge, gateway, _fabric_network(spec, version).prefixlen)
        fabric.link("set", index=bridge, state="up")
        for plan in spec.node_plans():
            node_fd = os.open(netns_path(plan.netns), os.O_RDONLY)
            try:
                # The peer is born inside the node namespace: no link ever touches the root ns.
                fabric.link(
                    "add",
                    ifname=plan.name,
                    kind="veth",
                    peer={"ifname": NODE_UPLINK, "net_ns_fd": node_fd},
                )
            finally:
                os.close(node_fd)
            port = interface_index(fabric, plan.name)
            fabric.link("set", index=port, master=bridge)
            fabric.link("set", index=port, state="up")


def _prepare_node(plan: NodePlan) -> None:
    """Node sysctls, written before the fabric makes the node's eth0 (so it inherits no-DAD)."""
    write_sysctls(plan.netns, NODE_SYSCTLS)


def _build_node(spec: LabSpec, plan: NodePlan) -> None:
    in_netns_thread(
        plan.netns,
        lambda: _build_node_here(spec, plan),
        timeout=ADDRESS_SETTLE_TIMEOUT + 10.0,
    )


def _unsettled_addresses(ipr: IPRoute, index: int) -> list[str]:
    """IPv6 addresses of link ``index`` that are still tentative (or failed DAD)."""
    unsettled = []
    for address in ipr.get_addr(family=socket.AF_INET6, index=index):
        flags = address.get_attr("IFA_FLAGS") or address["flags"]
        if flags & IFA_F_DADFAILED:
            unsettled.append(f"{address.get_attr('IFA_ADDRESS')} (dadfailed)")
        elif flags & IFA_F_TENTATIVE:
            unsettled.append(f"{address.get_attr('IFA_ADDRESS')} (tentative)")
    return unsettled


def _build_node_here(spec: LabSpec, plan: NodePlan) -> None:
    """Runs on a thread inside the node's namespace (its sysctls were set by _prepare_node)."""
    with IPRoute() as node:
        node.link("set", index=interface_index(node, "lo"), state="up")
        uplink = interface_index(node, NODE_UPLINK)
        for address in node_addresses(plan):
            prefix = _fabric_network(spec, _version(address)).prefixlen
            _add_address(node, uplink, address, prefix)
        node.link("set", index=uplink, state="up")
        if 6 in spec.families:
            # Bounded: with DAD off this is immediate; a route via a tentative address fails.
            unsettled = Retrying(
                stop=stop_after_delay(ADDRESS_SETTLE_TIMEOUT),
                wait=wait_fixed(0.05),
                retry=retry_if_result(bool),
                retry_error_callback=lambda state: state.outcome.result() if state.outcome else [],
            )(lambda: _unsettled_addresses(node, uplink))
            if unsettled:
                raise TopologyError(
                    f"{plan.name} {NODE_UPLINK}: IPv6 addresses not usable after "
                    f"{ADDRESS_SETTLE_TIMEOUT:.0f} s: {', '.join(unsettled)}"
                )
        for destination, gateway in node_routes(spec, plan):
            node.route("add", dst=destination, gateway=gateway, oif=uplink)


#: Neighbour entries one lab node needs at most: the other nodes on the fabric, its pods on the
#: bridge, and each pod's neighbours (the gateway and the node's other pods), per family.
NEIGHBOURS_PER_NODE = 64
#: The kernel's neighbour table limits (gc_thresh1..3): global, one table for every network
#: namespace, so a lab of many nodes and pods outgrows the defaults (128/512/1024) and new
#: neighbours fail ("neighbor table overflow"), as on Kubernetes nodes with many pods.
NEIGHBOUR_SYSCTLS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")


def ensure_neighbour_capacity(spec: LabSpec, root: Path = Path("/proc/sys/net")) -> dict[str, int]:
    """Raise the kernel's neighbour table limits (never lower them) so that ``spec``'s lab,
    and a few more like it, fit: every limit at least its default share of
    ``nodes * NEIGHBOURS_PER_NODE * 4``. These sysctls exist only in the root namespace and
    hold no traffic, route or link: they size a table. Returns the values written."""
    wanted_max = spec.nodes * NEIGHBOURS_PER_NODE * 4
    targets = dict(
        zip(NEIGHBOUR_SYSCTLS, (wanted_max // 8, wanted_max // 2, wanted_max), strict=True)
    )
    written: dict[str, int] = {}
    for family in ("ipv4", "ipv6"):
        for name, wanted in targets.items():
            path = root / family / "neigh" / "default" / name
            try:
                current = int(path.read_text().strip())
            except (OSError, ValueError):
                continue  # not this kernel's knob (or no IPv6): nothing to raise
            if current < wanted:
                path.write_text(str(wanted))
                written[f"{family}.{name}"] = wanted
    if written:
        log.info("kernel neighbour table limits raised for %d nodes: %s", spec.nodes, written)
    return written


def build_topology(spec: LabSpec) -> None:
    """Create the fabric and node namespaces with links, addresses, routes and sysctls.

    All or nothing: on any failure every namespace made here is removed before re-raising.
    Refuses to run over leftovers (sweep the lab first).
    """
    check_topology_faults(spec)
    ensure_neighbour_capacity(spec)
    names = topology_netns_names(spec)
    existing = [name for name in names if netns_exists(name)]
    if existing:
        raise TopologyError(f"namespace {existing[0]} already exists; run `netlab down` first")
    created: list[str] = []
    try:
        for name in names:
            create_netns(name)
            created.append(name)
        for plan in spec.node_plans():
            _prepare_node(plan)
        _build_fabric(spec)
        for plan in spec.node_plans():
            _build_node(spec, plan)
    except BaseException:
        _remove_namespaces(created)
        raise
    log.info("topology %s: fabric and %d node namespaces built", spec.name, spec.nodes)


def _remove_namespaces(names: list[str]) -> None:
    # Node namespaces first: their eth0 dies with them, then the fabric's veth ends follow.
    for name in reversed(names):
        remove_netns(name)


def destroy_topology(spec: LabSpec) -> None:
    """Remove the fabric and node namespaces (their links, addresses and routes go with them).
    Safe when some or all of them are already gone."""
    _remove_namespaces(topology_netns_names(spec))
    log.info("topology %s: removed", spec.name)


class Topology:
    """The lab network as a context manager: built on enter, destroyed on exit."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec

    def __enter__(self) -> Topology:
        build_topology(self.spec)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        destroy_topology(self.spec)
