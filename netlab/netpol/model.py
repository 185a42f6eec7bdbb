"""NetworkPolicy (networking.k8s.io/v1) as data, and its meaning in plain Python.

``parse_policy`` turns a stored NetworkPolicy into frozen dataclasses; ``workload_of`` turns a
stored Pod into the ``Workload`` the engine sees (namespace, labels, addresses, node, named
ports). ``PolicyInputs`` is everything one decision needs: policies, workloads, namespace
labels and node addresses.

``reference_allows`` is the API documentation read literally, with no eye on how rules are
written into a kernel: the compiler (``compiler.py``) is tested against it. What it says:

- A pod is isolated for ingress (egress) when a policy in its namespace selects it and lists
  ``Ingress`` (``Egress``) in its policyTypes; an isolated pod accepts (sends) only what at
  least one rule of those policies allows (a union); a pod no policy selects is open.
- A rule matches when its ``from`` (``to``) matches, or is absent or empty (every peer), and
  its ``ports`` match, or are absent or empty (every port and protocol, ICMP included).
- Peers: ``podSelector`` alone selects pods of the policy's namespace; ``namespaceSelector``
  alone every pod of the selected namespaces; both together the pods matching both (AND);
  peers of one rule are ORed. ``ipBlock`` matches addresses inside ``cidr`` and outside every
  ``except``, pod addresses included.
- Ports: a number (to ``endPort`` when given) and a protocol (default TCP); a name is looked up
  in the destination pod's containerPorts of that protocol (for egress too: the pod the
  traffic goes to); a port without number or name matches every port of its protocol.
- Traffic between a pod and its own node (the node's addresses, the bridge's gateway) is
  always allowed, both ways, and so is a pod reaching itself; hostNetwork pods are neither
  isolated nor selected as pods (their address is the node's: ipBlock may name it).
- A connection is allowed when the source's egress and the destination's ingress both allow
  it; replies of an allowed connection are allowed (conntrack), whatever the policies say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netlab.contract import JSONDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False  # validation refuses other operators


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector: every matchLabels pair and every requirement (AND); empty
    selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.requirements
        )

    @staticmethod
    def parse(raw: JSONDict | None) -> Selector:
        raw = raw or {}
        return Selector(
            match_labels=tuple(sorted((raw.get("matchLabels") or {}).items())),
            requirements=tuple(
                Requirement(
                    str(r.get("key", "")),
                    str(r.get("operator", "")),
                    tuple(str(v) for v in r.get("values") or ()),
                )
                for r in raw.get("matchExpressions") or ()
            ),
        )


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()

    def contains(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        inside = _in(ip, self.cidr)
        return inside and not any(_in(ip, cut) for cut in self.excepts)

    def ranges(self, *, honour_except: bool = True) -> list[IPNetwork]:
        """``cidr`` minus every ``except``, as non-overlapping networks."""
        whole = ipaddress.ip_network(self.cidr, strict=False)
        pieces: list[IPNetwork] = [whole]
        if honour_except:
            for text in self.excepts:
                cut = ipaddress.ip_network(text, strict=False)
                if cut.version != whole.version:
                    continue
                pieces = [rest for piece in pieces for rest in _subtract(piece, cut)]
        return sorted(pieces, key=lambda n: (n.version, n))


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str) -> bool:
    network = ipaddress.ip_network(cidr, strict=False)
    return ip.version == network.version and ip in network


def _subtract(piece: IPNetwork, cut: IPNetwork) -> list[IPNetwork]:
    if piece.version != cut.version or not piece.overlaps(cut):
        return [piece]
    if piece.subnet_of(cut):  # type: ignore[arg-type]  # same version checked above
        return []
    return list(piece.address_exclude(cut))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Peer:
    """One entry of ``from``/``to``: selectors (None: not given) or an ipBlock."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PortSpec:
    """One entry of ``ports``: ``port`` is a number, a name, or None (every port)."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule; ``peers``/``ports`` None or empty means every peer/port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str
    number: int


@dataclass(frozen=True)
class Workload:
    """A pod as policies see it (or a lab endpoint that stands for one, the cluster DNS)."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    node: str
    ports: tuple[NamedPort, ...] = ()
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def resolve(self, name: str, protocol: str) -> list[int]:
        """The numbers of this pod's containerPorts named ``name`` with ``protocol``."""
        return sorted({p.number for p in self.ports if p.name == name and p.protocol == protocol})


@dataclass(frozen=True)
class PolicyInputs:
    """A snapshot of what the policies act on."""

    policies: tuple[Policy, ...] = ()
    workloads: tuple[Workload, ...] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # node name -> the node's own addresses (InternalIPs and pod-bridge gateways)
    node_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def pods(self) -> list[Workload]:
        """The workloads policies select and isolate: pod-network pods with an address."""
        return [w for w in self.workloads if not w.host_network and w.ips]

    def pod_at(self, address: str) -> Workload | None:
        for workload in self.pods():
            if address in workload.ips:
                return workload
        return None

    def node_of_address(self, address: str) -> str | None:
        for node, addresses in self.node_addresses.items():
            if address in addresses:
                return node
        return None


# --- from API objects ----------------------------------------------------------------------


def parse_policy(obj: JSONDict) -> Policy:
    """A stored (defaulted, validated) NetworkPolicy as a ``Policy``."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    types = spec.get("policyTypes") or [INGRESS] + ([EGRESS] if spec.get("egress") else [])

    def rules(raw: Iterable[JSONDict] | None, peers_key: str) -> tuple[Rule, ...]:
        return tuple(
            Rule(
                peers=tuple(_peer(p) for p in rule.get(peers_key) or ()),
                ports=tuple(_port(p) for p in rule.get("ports") or ()),
            )
            for rule in raw or ()
        )

    return Policy(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        pod_selector=Selector.parse(spec.get("podSelector")),
        policy_types=frozenset(str(t) for t in types),
        ingress=rules(spec.get("ingress"), "from"),
        egress=rules(spec.get("egress"), "to"),
    )


def _peer(raw: JSONDict) -> Peer:
    block = raw.get("ipBlock")
    return Peer(
        pod_selector=Selector.parse(raw["podSelector"]) if "podSelector" in raw else None,
        namespace_selector=(
            Selector.parse(raw["namespaceSelector"]) if "namespaceSelector" in raw else None
        ),
        ip_block=(
            IPBlock(str(block.get("cidr", "")), tuple(str(e) for e in block.get("except") or ()))
            if block is not None
            else None
        ),
    )


def _port(raw: JSONDict) -> PortSpec:
    port = raw.get("port")
    return PortSpec(
        protocol=str(raw.get("protocol") or "TCP"),
        port=port if isinstance(port, int | str) and not isinstance(port, bool) else None,
        end_port=int(raw["endPort"]) if raw.get("endPort") is not None else None,
    )


def workload_of(pod: JSONDict) -> Workload | None:
    """A running pod as a ``Workload``; None for pods without a node or in a final phase
    (their addresses may already serve another pod)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    ips = tuple(str(entry.get("ip")) for entry in status.get("podIPs") or () if entry.get("ip"))
    if not ips and status.get("podIP"):
        ips = (str(status["podIP"]),)
    ports = tuple(
        NamedPort(str(port["name"]), str(port.get("protocol") or "TCP"), int(port["containerPort"]))
        for container in spec.get("containers") or ()
        for port in container.get("ports") or ()
        if port.get("name") and port.get("containerPort")
    )
    return Workload(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        ips=ips,
        node=str(spec["nodeName"]),
        ports=ports,
        host_network=bool(spec.get("hostNetwork")),
    )


# --- the meaning, read literally ---------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection: addresses, protocol (TCP/UDP/SCTP/ICMP), port."""

    source: str
    destination: str
    protocol: str
    port: int = 0


def selecting(inputs: PolicyInputs, pod: Workload, direction: str) -> list[Policy]:
    """The policies of ``pod``'s namespace that select it for ``direction``."""
    labels = pod.label_map
    return [
        p
        for p in inputs.policies
        if p.namespace == pod.namespace
        and direction in p.policy_types
        and p.pod_selector.matches(labels)
    ]


def peer_matches(inputs: PolicyInputs, policy: Policy, peer: Peer, address: str) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(address)
    pod = inputs.pod_at(address)
    if pod is None:
        return False
    if peer.namespace_selector is None:
        namespace_ok = pod.namespace == policy.namespace
    else:
        namespace_ok = peer.namespace_selector.matches(inputs.namespaces.get(pod.namespace, {}))
    pod_ok = peer.pod_selector is None or peer.pod_selector.matches(pod.label_map)
    return namespace_ok and pod_ok


def port_matches(spec: PortSpec, packet: Packet, destination: Workload | None) -> bool:
    if spec.protocol != packet.protocol:
        return False
    if spec.port is None:
        return True
    if isinstance(spec.port, str):
        return destination is not None and packet.port in destination.resolve(
            spec.port, spec.protocol
        )
    return spec.port <= packet.port <= (spec.end_port or spec.port)


def rule_matches(
    inputs: PolicyInputs, policy: Policy, rule: Rule, peer_address: str, packet: Packet
) -> bool:
    if rule.peers and not any(peer_matches(inputs, policy, p, peer_address) for p in rule.peers):
        return False
    if not rule.ports:
        return True
    destination = inputs.pod_at(packet.destination)
    return any(port_matches(spec, packet, destination) for spec in rule.ports)


def side_allows(inputs: PolicyInputs, pod: Workload, direction: str, packet: Packet) -> bool:
    """Whether ``pod``'s policies for ``direction`` let ``packet`` out (Egress) or in."""
    policies = selecting(inputs, pod, direction)
    if not policies:
        return True
    peer = packet.destination if direction == EGRESS else packet.source
    if inputs.node_of_address(peer) == pod.node:
        return True  # its own node: always allowed
    return any(
        rule_matches(inputs, policy, rule, peer, packet)
        for policy in policies
        for rule in policy.rules(direction)
    )


def reference_allows(inputs: PolicyInputs, packet: Packet) -> bool:
    """Whether a new connection is allowed, per the API documentation (module docstring)."""
    source = inputs.pod_at(packet.source)
    destination = inputs.pod_at(packet.destination)
    if source is not None and source is destination:
        return True  # a pod cannot block access to itself
    if source is not None and not side_allows(inputs, source, EGRESS, packet):
        return False
    return destination is None or side_allows(inputs, destination, INGRESS, packet)


def families_of(addresses: Sequence[str]) -> set[int]:
    return {ipaddress.ip_address(a).version for a in addresses}
