"""The lab's kube-proxy: iptables rules in every node's namespace, written from Services and
EndpointSlices the way kube-proxy's iptables mode writes them.

Why iptables (nat and filter tables, through ``iptables-restore``): it is kube-proxy's default
mode on kind, kubeadm and most managed clusters, the nodes already run iptables (Debian 12's
``iptables`` is the nf_tables backend, so the rules land in nftables all the same), the CNI
portmap plugin and the lab's faults use it too, and a whole table is replaced atomically per
commit. IPVS would need the ip_vs modules and ``ipvsadm`` and still iptables for masquerade;
kube-proxy's nftables mode needs the ``nft`` tool, which the lab does not install.

The chains are kube-proxy's:

- nat ``KUBE-SERVICES`` (from PREROUTING for pod traffic, from OUTPUT for the node's own):
  one rule per Service port and family, the cluster IP and port, to ``KUBE-SVC-<hash>``;
  its last rule sends traffic to the node's own addresses to ``KUBE-NODEPORTS``.
- ``KUBE-SVC-<hash>``: traffic from outside the cluster's pod range is marked for masquerade
  (``KUBE-MARK-MASQ``), then a random spread over the ready endpoints (``-m statistic --mode
  random --probability 1/n``, 1/(n-1), ... and the last unconditionally).
- ``KUBE-SEP-<hash>``: an endpoint marks its own traffic for masquerade (hairpin: a pod
  reaching itself through its Service), then DNATs to the endpoint's address and port.
- ``KUBE-NODEPORTS`` -> ``KUBE-EXT-<hash>``: NodePort traffic is marked for masquerade (for
  externalTrafficPolicy Local only traffic from the node itself is, and other sources go to
  the node's own endpoints, ``KUBE-SVL-<hash>``), then the Service's chain.
- ``KUBE-POSTROUTING`` (from POSTROUTING): masquerades what was marked (mark 0x4000).
- filter ``KUBE-SERVICES`` (FORWARD, OUTPUT) and ``KUBE-EXTERNAL-SERVICES`` (INPUT,
  FORWARD), for new connections: a Service port without an endpoint REJECTs (ICMP port
  unreachable), so a client is refused at once instead of waiting.

Pod-to-ClusterIP traffic from the pod range is never masqueraded: the endpoint sees the
client pod's own address.

Each change rewrites, per node and family, every ``KUBE-*`` chain in one ``iptables-restore
--noflush`` (a declared chain is flushed and refilled, chains no longer needed are deleted),
all nodes at once; rules that did not change are not written again. The jumps from the
built-in chains and a route for the service range (via the fabric gateway, inside the lab) are
set once per node when the proxy starts.

Faults that live here: ``stale-endpoints`` (endpoints that are not ready stay in the rules),
``nodeport-missing-on-node`` (node-2 has no NodePort rules), ``service-masquerade``
(every connection to a cluster IP is masqueraded, so endpoints see a node address) and
``service-resets`` (`SERVICE_RESET_SHARE` of new TCP connections to a cluster IP are reset:
the Service's chain sends them to a closed port of an endpoint, whose kernel resets them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from netlab.contract import JSONDict
from netlab.dataplane.nsexec import in_netns_thread
from netlab.dataplane.rulesync import RuleSync, feed_rules
from netlab.dataplane.topology import NODE_UPLINK
from netlab.spec import LabSpec, NodePlan, ip_version

log = logging.getLogger(__name__)

STALE_ENDPOINTS_FAULT = "stale-endpoints"
NODEPORT_MISSING_FAULT = "nodeport-missing-on-node"
SERVICE_MASQUERADE_FAULT = "service-masquerade"
SERVICE_RESETS_FAULT = "service-resets"
#: The share of new TCP connections to a cluster IP that ``service-resets`` resets.
SERVICE_RESET_SHARE = 0.3
CLOSED_PORT = 1  # tcpmux: nothing listens there in a pod, so its kernel answers a reset
NODEPORT_MISSING_NODE = "node-2"
PROXY_FAULTS = frozenset(
    {STALE_ENDPOINTS_FAULT, NODEPORT_MISSING_FAULT, SERVICE_MASQUERADE_FAULT, SERVICE_RESETS_FAULT}
)

MASQ_MARK = "0x4000"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RESTORE_COMMANDS = {4: "iptables-restore", 6: "ip6tables-restore"}
RESTORE_TIMEOUT = 30.0  # seconds for one iptables-restore (it may wait for the xtables lock)
# Chains every node has, per table; the per-Service ones come and go.
FIXED_CHAINS = {
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"),
}
# Jumps from the built-in chains into kube-proxy's, as kube-proxy's iptablesJumpChains.
JUMPS = {
    "nat": (
        ("PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        (
            "POSTROUTING",
            '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        ),
    ),
    "filter": (
        (
            "INPUT",
            "-m conntrack --ctstate NEW -m comment --comment "
            '"kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW -m comment --comment "
            '"kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        ),
        (
            "FORWARD",
            "-m conntrack --ctstate NEW -m comment --comment "
            '"kubernetes service portals" -j KUBE-SERVICES',
        ),
        (
            "OUTPUT",
            "-m conntrack --ctstate NEW -m comment --comment "
            '"kubernetes service portals" -j KUBE-SERVICES',
        ),
    ),
}


# --- what the rules are made from (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a Service port, from an EndpointSlice."""

    ip: str
    port: int
    node: str
    ready: bool
    serving: bool
    terminating: bool

    @property
    def address(self) -> str:
        """``ip:port`` as DNAT takes it (IPv6 in brackets)."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service in one IP family, with the endpoints behind it."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP, UDP, SCTP
    port: int
    cluster_ip: str
    node_port: int | None
    external_local: bool  # externalTrafficPolicy: Local
    internal_local: bool  # internalTrafficPolicy: Local
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def service_port_name(self) -> str:
        """kube-proxy's ServicePortName: ``ns/name:port-name`` (``ns/name`` when unnamed)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    def chain(self, kind: str) -> str:
        """KUBE-SVC-, KUBE-EXT-, KUBE-SVL- + kube-proxy's portProtoHash."""
        digest = hashlib.sha256((self.service_port_name + self.protocol.lower()).encode())
        return f"KUBE-{kind}-{base64.b32encode(digest.digest()).decode()[:16]}"

    def endpoint_chain(self, endpoint: Endpoint) -> str:
        """KUBE-SEP- + kube-proxy's servicePortEndpointChainName hash."""
        key = self.service_port_name + self.protocol.lower() + endpoint.address
        digest = hashlib.sha256(key.encode()).digest()
        return f"KUBE-SEP-{base64.b32encode(digest).decode()[:16]}"


def service_ports(
    services: Iterable[JSONDict], slices: Iterable[JSONDict], version: int
) -> list[ServicePort]:
    """Every proxied Service port of IP ``version`` with its endpoints (ClusterIP, NodePort and
    LoadBalancer Services with a cluster IP of that family; not headless or ExternalName)."""
    by_service: dict[tuple[str, str], list[JSONDict]] = {}
    family = f"IPv{version}"
    for endpoint_slice in slices:
        meta = endpoint_slice.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and endpoint_slice.get("addressType") == family:
            by_service.setdefault((str(meta.get("namespace", "")), owner), []).append(
                endpoint_slice
            )
    found: list[ServicePort] = []
    for service in services:
        meta = service.get("metadata") or {}
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        cluster_ip = next(
            (ip for ip in spec.get("clusterIPs") or [] if ip_version(ip) == version), None
        )
        if cluster_ip is None:
            continue
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        for port in spec.get("ports") or []:
            port_name = str(port.get("name") or "")
            protocol = str(port.get("protocol") or "TCP")
            endpoints: dict[tuple[str, int], Endpoint] = {}
            for endpoint_slice in by_service.get(key, []):
                number = next(
                    (
                        p.get("port")
                        for p in endpoint_slice.get("ports") or []
                        if str(p.get("name") or "") == port_name
                        and str(p.get("protocol") or "TCP") == protocol
                    ),
                    None,
                )
                if number is None:
                    continue
                for entry in endpoint_slice.get("endpoints") or []:
                    conditions = entry.get("conditions") or {}
                    ready = conditions.get("ready") is not False
                    for address in entry.get("addresses") or []:
                        endpoints[(address, int(number))] = Endpoint(
                            ip=address,
                            port=int(number),
                            node=str(entry.get("nodeName") or ""),
                            ready=ready,
                            serving=conditions.get("serving", ready) is not False,
                            terminating=bool(conditions.get("terminating")),
                        )
            found.append(
                ServicePort(
                    namespace=key[0],
                    name=key[1],
                    port_name=port_name,
                    protocol=protocol,
                    port=int(port["port"]),
                    cluster_ip=cluster_ip,
                    node_port=int(port["nodePort"]) if port.get("nodePort") else None,
                    external_local=spec.get("externalTrafficPolicy") == "Local",
                    internal_local=spec.get("internalTrafficPolicy") == "Local",
                    endpoints=tuple(sorted(endpoints.values(), key=lambda e: (e.ip, e.port))),
                )
            )
    return sorted(found, key=lambda p: (p.namespace, p.name, p.port_name, p.protocol))


def usable_endpoints(endpoints: Sequence[Endpoint], *, stale: bool) -> list[Endpoint]:
    """The endpoints traffic goes to: the ready ones; when none is ready, the serving ones
    that are terminating (kube-proxy's terminating-endpoint fallback). Under the
    stale-endpoints fault readiness is ignored: every endpoint the slices list stays."""
    if stale:
        return list(endpoints)
    ready = [e for e in endpoints if e.ready]
    return ready or [e for e in endpoints if e.serving and e.terminating]


@dataclass
class NodeRules:
    """The KUBE-* chains of one node and family: table -> chain -> rules."""

    chains: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {
            table: {c: [] for c in names} for table, names in FIXED_CHAINS.items()
        }
    )

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chains[table].setdefault(chain, []).append(f"-A {chain} {rule}")

    def declare(self, table: str, chain: str) -> None:
        self.chains[table].setdefault(chain, [])

    def restore_input(self, stale_chains: Mapping[str, Iterable[str]]) -> str:
        """One iptables-restore --noflush document: every chain declared (so flushed), its
        rules, then ``-X`` for the chains of ``stale_chains`` no longer used."""
        lines: list[str] = []
        for table, chains in self.chains.items():
            gone = sorted(set(stale_chains.get(table, ())) - set(chains))
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in [*chains, *gone]]
            for rules in chains.values():
                lines += rules
            lines += [f"-X {chain}" for chain in gone]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _host_mask(ip: str) -> str:
    return f"{ip}/{32 if ':' not in ip else 128}"


def node_rules(
    ports: Sequence[ServicePort],
    *,
    node: str,
    cluster_cidrs: Sequence[str],
    faults: frozenset[str] = frozenset(),
) -> NodeRules:
    """kube-proxy's iptables rules for ``node`` (one family: ``ports`` and ``cluster_cidrs``
    of the same IP version)."""
    rules = NodeRules()
    stale = STALE_ENDPOINTS_FAULT in faults
    serve_node_ports = not (NODEPORT_MISSING_FAULT in faults and node == NODEPORT_MISSING_NODE)
    masquerade_all = SERVICE_MASQUERADE_FAULT in faults
    resets = SERVICE_RESETS_FAULT in faults
    rules.add("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    rules.add("nat", "KUBE-POSTROUTING", f"-j MARK --xor-mark {MASQ_MARK}")
    rules.add(
        "nat",
        "KUBE-POSTROUTING",
        '-m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    )
    rules.add("nat", "KUBE-MARK-MASQ", f"-j MARK --or-mark {MASQ_MARK}")
    for port in ports:
        proto = port.protocol.lower()
        match = f"-p {proto} -m {proto}"
        comment = f'-m comment --comment "{port.service_port_name} cluster IP"'
        destination = f"-d {_host_mask(port.cluster_ip)} {match} --dport {port.port}"
        usable = usable_endpoints(port.endpoints, stale=stale)
        cluster_endpoints = [e for e in usable if e.node == node] if port.internal_local else usable
        if not cluster_endpoints:
            rules.add(
                "filter",
                "KUBE-SERVICES",
                f'-m comment --comment "{port.service_port_name} has no endpoints" '
                f"{destination} -j REJECT",
            )
        else:
            service_chain = port.chain("SVC")
            rules.add("nat", "KUBE-SERVICES", f"{comment} {destination} -j {service_chain}")
            if masquerade_all:
                rules.add("nat", service_chain, f"{comment} {destination} -j KUBE-MARK-MASQ")
            else:
                for cidr in cluster_cidrs:
                    rules.add(
                        "nat",
                        service_chain,
                        f"! -s {cidr} {comment} {destination} -j KUBE-MARK-MASQ",
                    )
            if resets and proto == "tcp":
                _resets(rules, port, service_chain, cluster_endpoints[0])
            _spread(rules, port, service_chain, cluster_endpoints)
        if port.node_port is None or not serve_node_ports:
            continue
        node_port_match = f"{match} --dport {port.node_port}"
        local_endpoints = [e for e in usable if e.node == node]
        external_endpoints = local_endpoints if port.external_local else usable
        if not external_endpoints:
            reason = (
                "has no local endpoints" if port.external_local and usable else "has no endpoints"
            )
            target = "DROP" if port.external_local and usable else "REJECT"
            rules.add(
                "filter",
                "KUBE-EXTERNAL-SERVICES",
                f'-m comment --comment "{port.service_port_name} {reason}" '
                f"-m addrtype --dst-type LOCAL {node_port_match} -j {target}",
            )
            if not (port.external_local and usable):
                continue
        external_chain = port.chain("EXT")
        rules.add(
            "nat",
            "KUBE-NODEPORTS",
            f'-m comment --comment "{port.service_port_name}" {node_port_match} -j {external_chain}',
        )
        if port.external_local:
            service_chain = port.chain("SVC")
            if not cluster_endpoints:  # pod traffic needs the cluster-wide chain even so
                rules.declare("nat", service_chain)
                _spread(rules, port, service_chain, usable)
            for cidr in cluster_cidrs:
                rules.add(
                    "nat",
                    external_chain,
                    f'-s {cidr} -m comment --comment "pod traffic for '
                    f'{port.service_port_name} external destinations" -j {service_chain}',
                )
            rules.add(
                "nat",
                external_chain,
                f'-m comment --comment "masquerade LOCAL traffic for {port.service_port_name} '
                'external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
            )
            rules.add(
                "nat",
                external_chain,
                f'-m comment --comment "route LOCAL traffic for {port.service_port_name} '
                f'external destinations" -m addrtype --src-type LOCAL -j {service_chain}',
            )
            local_chain = port.chain("SVL")
            rules.add("nat", external_chain, f"-j {local_chain}")
            rules.declare("nat", local_chain)
            _spread(rules, port, local_chain, local_endpoints)
        else:
            rules.add(
                "nat",
                external_chain,
                f'-m comment --comment "masquerade traffic for {port.service_port_name} '
                'external destinations" -j KUBE-MARK-MASQ',
            )
            rules.add("nat", external_chain, f"-j {port.chain('SVC')}")
            if not cluster_endpoints:
                rules.declare("nat", port.chain("SVC"))
                _spread(rules, port, port.chain("SVC"), usable)
    # Must stay the last rule of KUBE-SERVICES: traffic to the node's own addresses.
    if serve_node_ports:
        rules.add(
            "nat",
            "KUBE-SERVICES",
            '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
            'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        )
    return rules


def _resets(rules: NodeRules, port: ServicePort, chain: str, endpoint: Endpoint) -> None:
    """``service-resets``: `SERVICE_RESET_SHARE` of the new connections of ``chain`` go to a
    closed port of ``endpoint``, whose kernel resets them. A REJECT in the filter table would
    answer from the DNATed address, which the client's socket ignores (and retransmits); this
    reset is the connection's own reply, un-NATed to the cluster IP. Masqueraded when the
    endpoint reaches itself, as kube-proxy's endpoint chains do, so the reset comes back
    through the node."""
    reset_chain = port.chain("RST")
    comment = f'-m comment --comment "{port.service_port_name} reset fault"'
    rules.add(
        "nat",
        chain,
        f"{comment} -m statistic --mode random --probability {SERVICE_RESET_SHARE} "
        f"-j {reset_chain}",
    )
    rules.add("nat", reset_chain, f"{comment} -s {_host_mask(endpoint.ip)} -j KUBE-MARK-MASQ")
    host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
    rules.add("nat", reset_chain, f"{comment} -p tcp -j DNAT --to-destination {host}:{CLOSED_PORT}")


def _spread(rules: NodeRules, port: ServicePort, chain: str, endpoints: Sequence[Endpoint]) -> None:
    """A random spread from ``chain`` over ``endpoints`` (probability 1/n, 1/(n-1), ...), and
    each endpoint's KUBE-SEP chain (hairpin masquerade, DNAT)."""
    rules.declare("nat", chain)
    proto = port.protocol.lower()
    for index, endpoint in enumerate(endpoints):
        endpoint_chain = port.endpoint_chain(endpoint)
        comment = f'-m comment --comment "{port.service_port_name} -> {endpoint.address}"'
        remaining = len(endpoints) - index
        statistic = (
            f" -m statistic --mode random --probability {1 / remaining:.11f}"
            if remaining > 1
            else ""
        )
        rules.add("nat", chain, f"{comment}{statistic} -j {endpoint_chain}")
        if endpoint_chain in rules.chains["nat"]:
            continue
        sep_comment = f'-m comment --comment "{port.service_port_name}"'
        rules.add(
            "nat",
            endpoint_chain,
            f"-s {_host_mask(endpoint.ip)} {sep_comment} -j KUBE-MARK-MASQ",
        )
        rules.add(
            "nat",
            endpoint_chain,
            f"{sep_comment} -p {proto} -m {proto} -j DNAT --to-destination {endpoint.address}",
        )


def jump_rules_input() -> str:
    """The jumps from the built-in chains, inserted first (as kube-proxy's ``-I``), and the
    fixed chains declared: an iptables-restore --noflush document run once per node."""
    lines: list[str] = []
    for table, jumps in JUMPS.items():
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain in FIXED_CHAINS[table]]
        lines += [f"-I {chain} 1 {rule}" for chain, rule in reversed(jumps)]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# --- writing the rules into node namespaces ----------------------------------------------------


class ProxyError(RuntimeError):
    """iptables-restore failed in a node namespace; the message carries its error."""


async def restore(netns: str, version: int, document: str) -> None:
    """Run ``iptables-restore --noflush`` (ip6tables for IPv6) in ``netns`` with ``document``."""
    command = [RESTORE_COMMANDS[version], "--noflush", "--wait"]
    await feed_rules(netns, command, document, RESTORE_TIMEOUT, ProxyError)


def _add_service_routes(spec: LabSpec, plan: NodePlan) -> None:
    """Routes for the service ranges via the fabric gateway, so the node's own connections
    to cluster IPs have a route before OUTPUT's DNAT rewrites them (a real node's default
    route covers them); the gateway is the lab's fabric namespace, never the machine's."""

    def add_here() -> None:
        with IPRoute() as ipr:
            uplink = ipr.link_lookup(ifname=NODE_UPLINK)[0]
            for cidr, gateway in zip(spec.service_cidrs, spec.fabric_gateways, strict=True):
                ipr.route("replace", dst=cidr, gateway=gateway, oif=uplink)

    in_netns_thread(plan.netns, add_here)


class ServiceProxy(RuleSync[tuple[str, int], NodeRules]):
    """kube-proxy for every node of a lab: ``start`` installs the jumps and routes, then
    every ``notify`` leads to a sync (coalesced while one runs) of all nodes' rules from
    ``read_state()`` (the Services and EndpointSlices)."""

    error = ProxyError
    what = "proxy"

    def __init__(
        self,
        spec: LabSpec,
        read_state: Callable[[], tuple[Sequence[JSONDict], Sequence[JSONDict]]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.read_state = read_state
        self.plans = spec.node_plans()
        self._written: dict[tuple[str, int], str] = {}  # (node, family) -> last document
        self._chains: dict[tuple[str, int], dict[str, set[str]]] = {}

    async def start(self) -> None:
        """Jumps and routes on every node, the first sync, then follow ``notify``."""
        jumps = jump_rules_input()
        await asyncio.gather(
            *(asyncio.to_thread(_add_service_routes, self.spec, plan) for plan in self.plans)
        )
        await asyncio.gather(
            *(
                restore(plan.netns, version, jumps)
                for plan in self.plans
                for version in self.spec.families
            )
        )
        await self.sync()
        self.follow()

    async def sync(self) -> None:
        """Write every node's rules (those that changed) from the current state."""
        generation = self.generation()
        started = time.monotonic()
        services, slices = self.read_state()
        documents: dict[tuple[str, int], tuple[NodeRules, str]] = {}
        for version in self.spec.families:
            ports = service_ports(services, slices, version)
            cidrs = [c for c in self.spec.cluster_cidrs if ip_version(c.split("/")[0]) == version]
            for plan in self.plans:
                key = (plan.name, version)
                rules = node_rules(
                    ports, node=plan.name, cluster_cidrs=cidrs, faults=self.spec.faults
                )
                document = rules.restore_input(self._chains.get(key, {}))
                if self._written.get(key) != document:
                    documents[key] = (rules, document)
        netns = {plan.name: plan.netns for plan in self.plans}

        async def write(key: tuple[str, int], document: str) -> None:
            await restore(netns[key[0]], key[1], document)

        def written(key: tuple[str, int], rules: NodeRules | None) -> None:
            if rules is None:
                self._written.pop(key, None)
                return
            self._written[key] = documents[key][1]
            self._chains[key] = {table: set(chains) for table, chains in rules.chains.items()}

        await self.write_changed(generation, started, documents, write, written)
        if documents:
            log.debug(
                "proxy: %d rule sets written in %.3f s", len(documents), self.figures.last_seconds
            )
