"""NetworkPolicies compiled into one node's nftables rules (pure: no kernel, no I/O).

The rules live in the node's table ``inet netlab-netpol`` and hook the node's ``forward``
path, which every pod packet that leaves a pod and does not end on the node crosses: routed
to other nodes, DNATed to a Service endpoint, and bridged between two pods of the node (the
lab turns ``bridge-nf-call-iptables`` on, so bridged frames pass the IP hooks). Traffic between
a pod and its own node never crosses ``forward`` (it is INPUT or OUTPUT), so it stays allowed,
as the API documentation wants.

Two base chains, one per direction, so that each ends with its own verdict:

- ``egress`` (priority filter - 10): ``ct state established,related accept``, then the
  source address looked up in the verdict map ``egress-pods/v4`` (``/v6``), which sends the
  packets of each egress-isolated pod of this node to ``pod-egress/<ns>/<pod>``;
- ``ingress`` (priority filter - 5): the same for destinations, ``ingress-pods/v4`` ->
  ``pod-ingress/<ns>/<pod>``.

A pod chain accepts the pod's own address (a pod cannot block itself), jumps to the chain of
each policy selecting it, and drops what none accepted. A policy chain
(``policy-egress/<ns>/<name>``) has one rule per rule x port clause x family, accepting what
matches: peers are one interval set per rule and family (``peers/<ns>/<name>/<dir>/<i>/v4``:
the selected pods' addresses and the ipBlocks minus their excepts, collapsed), numbered ports
an anonymous set per protocol, named ports a set of (address . protocol . port) per rule, name,
protocol and family, resolved in the destination pods' containerPorts (for ingress the
node's own selected pods, for egress every pod of the cluster). An accept in ``egress`` ends
that chain only: the packet goes on to ``ingress``; a drop in either is final.

``NodeRuleSet`` is the result as data: it renders to ``nft`` commands (``full_document``, or
``transaction`` from the rules a node has to the ones it should have, touching only the sets
and chains that changed), and ``admits`` runs a packet through it the way the kernel would,
so tests can hold the compiled rules against ``model.reference_allows``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netlab.netpol.model import (
    EGRESS,
    INGRESS,
    Packet,
    Peer,
    Policy,
    PolicyInputs,
    Rule,
    Workload,
    selecting,
)

TABLE = "netlab-netpol"
FAMILY_PREFIX = "inet"
BASE_CHAINS = {EGRESS: ("egress", -10), INGRESS: ("ingress", -5)}
ADDRESS_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
IP_KEYWORD = {4: "ip", 6: "ip6"}
MAX_NAME = 200  # nft takes 256; longer names are cut and given a hash
ELEMENTS_PER_LINE = 500
DIRECTION_WORD = {INGRESS: "ingress", EGRESS: "egress"}
# IPv6 neighbour discovery between pods of a node crosses the bridge's IP hooks (ARP, its
# IPv4 counterpart, never does): it is link plumbing, not a connection, and always passes.
ND_TYPES = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert")
NEIGHBOUR_DISCOVERY = "ICMPv6-ND"  # the protocol of such packets in ``NodeRuleSet.admits``

# Fault names (netlab.faults) the compiler acts on.
IGNORED_ON_NODE_FAULT = "netpol-ignored-on-node"
IGNORED_NODE = "node-2"
EGRESS_IGNORED_FAULT = "netpol-egress-ignored"
NAMED_PORTS_FAULT = "netpol-named-ports-unresolved"
EXCEPT_IGNORED_FAULT = "netpol-except-ignored"
NAMESPACE_AS_POD_FAULT = "netpol-namespace-selector-as-pod-selector"
AND_AS_OR_FAULT = "netpol-peer-and-as-or"
REPLIES_DROPPED_FAULT = "netpol-replies-dropped"
COMPILER_FAULTS = frozenset(
    {
        IGNORED_ON_NODE_FAULT,
        EGRESS_IGNORED_FAULT,
        NAMED_PORTS_FAULT,
        EXCEPT_IGNORED_FAULT,
        NAMESPACE_AS_POD_FAULT,
        AND_AS_OR_FAULT,
        REPLIES_DROPPED_FAULT,
    }
)


def object_name(*parts: str) -> str:
    """A set or chain name from its parts, joined by '/', cut with a hash when too long."""
    name = "/".join(parts)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_NAME - 13]}.{digest}"


# --- the rules as data ----------------------------------------------------------------------


@dataclass(frozen=True)
class NftSet:
    """A named set: ``addresses`` (interval set of CIDRs), ``named-ports`` ((address,
    protocol, port) triples) or ``dispatch`` (verdict map: address -> chain)."""

    name: str
    kind: str
    family: int
    elements: tuple[tuple[str, ...], ...] = ()

    def declaration(self) -> str:
        address = ADDRESS_TYPE[self.family]
        where = f"{FAMILY_PREFIX} {TABLE} {self.name}"
        if self.kind == "addresses":
            return f"add set {where} {{ type {address}; flags interval; }}"
        if self.kind == "named-ports":
            return f"add set {where} {{ type {address} . inet_proto . inet_service; }}"
        return f"add map {where} {{ type {address} : verdict; }}"

    def element_text(self, element: tuple[str, ...]) -> str:
        if self.kind == "addresses":
            return element[0]
        if self.kind == "named-ports":
            return " . ".join(element)
        return f"{element[0]} : jump {element[1]}"

    def element_lines(self) -> list[str]:
        lines = []  # `add element` takes sets and maps alike
        for start in range(0, len(self.elements), ELEMENTS_PER_LINE):
            chunk = self.elements[start : start + ELEMENTS_PER_LINE]
            listed = ", ".join(self.element_text(e) for e in chunk)
            lines.append(f"add element {FAMILY_PREFIX} {TABLE} {self.name} {{ {listed} }}")
        return lines

    @functools.cached_property
    def _networks(
        self,
    ) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple[str, ...]]]:
        return [(ipaddress.ip_network(e[0]), e) for e in self.elements]

    def contains(self, key: tuple[str, ...]) -> tuple[str, ...] | None:
        """The element ``key`` falls in (an address for ``addresses``/``dispatch``, a triple
        for ``named-ports``), or None."""
        if self.kind == "addresses":
            address = ipaddress.ip_address(key[0])
            for network, element in self._networks:
                if network.version == address.version and address in network:
                    return element
            return None
        if self.kind == "named-ports":
            return key if key in self.elements else None
        return next((e for e in self.elements if e[0] == key[0]), None)


@dataclass(frozen=True)
class NftRule:
    """One rule: every given match must hold; then ``verdict`` (accept, drop, jump CHAIN,
    vmap) applies. ``family`` is needed whenever an address is matched."""

    verdict: str
    family: int | None = None
    established: bool = False
    source: str | None = None  # literal address
    destination: str | None = None
    source_set: str | None = None
    destination_set: str | None = None
    protocol: str | None = None  # tcp, udp, sctp
    ports: tuple[tuple[int, int], ...] = ()
    named_ports_set: str | None = None
    dispatch_on: str | None = None  # "source" or "destination": vmap of the verdict's map
    neighbour_discovery: bool = False  # ICMPv6 neighbour and router solicitations, adverts
    counter: bool = False
    comment: str = ""

    def text(self) -> str:
        words: list[str] = []
        ip = IP_KEYWORD[self.family] if self.family else ""
        if self.established:
            words.append("ct state established,related")
        if self.neighbour_discovery:
            words.append(f"icmpv6 type {{ {', '.join(ND_TYPES)} }}")
        # Address matches: a literal address, or a named set (@name).
        for match, value in (
            ("saddr ", self.source),
            ("daddr ", self.destination),
            ("saddr @", self.source_set),
            ("daddr @", self.destination_set),
        ):
            if value:
                words.append(f"{ip} {match}{value}")
        if self.protocol:
            words.append(f"meta l4proto {self.protocol}")
        if self.ports:
            ranges = [str(a) if a == b else f"{a}-{b}" for a, b in self.ports]
            words.append(
                f"th dport {ranges[0]}"
                if len(ranges) == 1
                else f"th dport {{ {', '.join(ranges)} }}"
            )
        if self.named_ports_set:
            words.append(f"{ip} daddr . meta l4proto . th dport @{self.named_ports_set}")
        if self.counter:
            words.append("counter")
        if self.dispatch_on:
            field_ = "saddr" if self.dispatch_on == "source" else "daddr"
            words.append(f"{ip} {field_} vmap @{self.verdict}")
        else:
            words.append(self.verdict)
        if self.comment:
            words.append(f'comment "{self.comment[:120]}"')
        return " ".join(words)


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...] = ()
    priority: int | None = None  # base chains: hooked on forward at this priority

    def declaration(self) -> str:
        where = f"{FAMILY_PREFIX} {TABLE} {self.name}"
        if self.priority is None:
            return f"add chain {where}"
        return (
            f"add chain {where} {{ type filter hook forward priority {self.priority}; "
            "policy accept; }"
        )

    def rule_lines(self) -> list[str]:
        return [f"add rule {FAMILY_PREFIX} {TABLE} {self.name} {r.text()}" for r in self.rules]


@dataclass
class NodeRuleSet:
    """One node's table: sets and chains by name."""

    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, NftChain] = field(default_factory=dict)

    # --- rendering ---

    def full_document(self) -> str:
        """The whole table from nothing (an existing one is replaced), for ``nft -f``."""
        return transaction(None, self)

    # --- running a packet through it ---

    def admits(self, packet: Packet, *, established: bool = False) -> bool:
        """Whether this node's forward hook lets ``packet`` through (True when no base chain
        drops it); ``established``: a packet of a connection conntrack already knows."""
        bases = sorted(
            (c for c in self.chains.values() if c.priority is not None),
            key=lambda c: c.priority or 0,
        )
        return all(self._run(chain, packet, established, 0) != "drop" for chain in bases)

    def _run(self, chain: NftChain, packet: Packet, established: bool, depth: int) -> str | None:
        if depth > 16:
            raise RuntimeError(f"jump loop at {chain.name}")
        for rule in chain.rules:
            if not self._matches(rule, packet, established):
                continue
            if rule.dispatch_on:
                address = packet.source if rule.dispatch_on == "source" else packet.destination
                found = self.sets[rule.verdict].contains((address,))
                if found is None:
                    continue
                target = found[1]
            elif rule.verdict.startswith("jump "):
                target = rule.verdict.split(" ", 1)[1]
            else:
                return rule.verdict
            outcome = self._run(self.chains[target], packet, established, depth + 1)
            if outcome is not None:
                return outcome
        return None

    def _matches(self, rule: NftRule, packet: Packet, established: bool) -> bool:
        if rule.established and not established:
            return False
        if rule.neighbour_discovery and packet.protocol != NEIGHBOUR_DISCOVERY:
            return False
        if rule.family is not None and ipaddress.ip_address(packet.source).version != rule.family:
            return False
        if rule.source and packet.source != rule.source:
            return False
        if rule.destination and packet.destination != rule.destination:
            return False
        for name, address in (
            (rule.source_set, packet.source),
            (rule.destination_set, packet.destination),
        ):
            if name and self.sets[name].contains((address,)) is None:
                return False
        protocol = packet.protocol.lower()
        if rule.protocol and protocol != rule.protocol:
            return False
        if rule.ports and not any(a <= packet.port <= b for a, b in rule.ports):
            return False
        if rule.named_ports_set:
            key = (packet.destination, protocol, str(packet.port))
            if self.sets[rule.named_ports_set].contains(key) is None:
                return False
        return True


def transaction(old: NodeRuleSet | None, new: NodeRuleSet) -> str:
    """``nft -f`` commands taking a node from ``old`` (None: nothing of ours, or a stale table
    to replace) to ``new`` in one atomic transaction, touching only what changed: new objects
    are declared first, changed sets and chains flushed and refilled, then objects no longer
    needed flushed and deleted (after every reference to them is gone)."""
    lines: list[str] = []
    where = f"{FAMILY_PREFIX} {TABLE}"
    if old is None:
        # `add` then `delete` then `add`: a table left by an earlier daemon is replaced whole.
        lines += [f"add table {where}", f"delete table {where}", f"add table {where}"]
        old = NodeRuleSet()
    for name, nft_set in new.sets.items():
        if name not in old.sets:
            lines.append(nft_set.declaration())
    for name, chain in new.chains.items():
        if name not in old.chains:
            lines.append(chain.declaration())
    gone_chains = [name for name in old.chains if name not in new.chains]
    lines += [f"flush chain {where} {name}" for name in gone_chains]
    for name, nft_set in new.sets.items():
        if nft_set.kind == "dispatch":
            continue  # maps refer to chains: filled after the chains
        if old.sets.get(name) != nft_set:
            if name in old.sets:
                lines.append(f"flush set {where} {name}")
            lines += nft_set.element_lines()
    for name, chain in new.chains.items():
        if old.chains.get(name) != chain:
            if name in old.chains:
                lines.append(f"flush chain {where} {name}")
            lines += chain.rule_lines()
    for name, nft_set in new.sets.items():
        if nft_set.kind == "dispatch" and old.sets.get(name) != nft_set:
            if name in old.sets:
                lines.append(f"flush map {where} {name}")
            lines += nft_set.element_lines()
    lines += [f"delete chain {where} {name}" for name in gone_chains]
    for name, nft_set in old.sets.items():
        if name not in new.sets:
            keyword = "map" if nft_set.kind == "dispatch" else "set"
            lines.append(f"delete {keyword} {where} {name}")
    return "\n".join(lines) + "\n" if lines else ""


# --- compiling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Semantics:
    """How the compiler reads policies: the API's way, or a fault's."""

    except_honoured: bool = True
    named_ports_resolved: bool = True
    namespace_selector_as_pod_selector: bool = False
    peer_and_as_or: bool = False
    egress_enforced: bool = True
    conntrack_replies: bool = True

    @staticmethod
    def for_faults(faults: Iterable[str]) -> Semantics:
        faults = frozenset(faults)
        return Semantics(
            except_honoured=EXCEPT_IGNORED_FAULT not in faults,
            named_ports_resolved=NAMED_PORTS_FAULT not in faults,
            namespace_selector_as_pod_selector=NAMESPACE_AS_POD_FAULT in faults,
            peer_and_as_or=AND_AS_OR_FAULT in faults,
            egress_enforced=EGRESS_IGNORED_FAULT not in faults,
            conntrack_replies=REPLIES_DROPPED_FAULT not in faults,
        )


def peer_pods(
    inputs: PolicyInputs, policy: Policy, peer: Peer, semantics: Semantics
) -> list[Workload]:
    """The pods a selector peer stands for (an ipBlock peer stands for none)."""
    if peer.ip_block is not None:
        return []
    pods = inputs.pods()
    own = [p for p in pods if p.namespace == policy.namespace]

    def by_pod(candidates: Sequence[Workload]) -> list[Workload]:
        if peer.pod_selector is None:
            return list(candidates)
        selector = peer.pod_selector
        return [p for p in candidates if selector.matches(p.label_map)]

    if peer.namespace_selector is None:
        return by_pod(own)
    ns_selector = peer.namespace_selector
    if semantics.namespace_selector_as_pod_selector:
        # The fault: the namespace selector is matched against pod labels of the policy's
        # own namespace, as if it were a second pod selector.
        return [p for p in by_pod(own) if ns_selector.matches(p.label_map)]
    in_namespaces = [p for p in pods if ns_selector.matches(inputs.namespaces.get(p.namespace, {}))]
    if semantics.peer_and_as_or and peer.pod_selector is not None:
        # The fault: podSelector OR namespaceSelector instead of AND.
        chosen = {p.key: p for p in [*by_pod(own), *in_namespaces]}
        return list(chosen.values())
    return by_pod(in_namespaces)


def rule_peer_networks(
    inputs: PolicyInputs, policy: Policy, rule: Rule, family: int, semantics: Semantics
) -> list[str]:
    """A rule's peers as collapsed CIDRs of ``family``: selected pods' addresses (host
    masks) and ipBlocks minus their excepts."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            networks += [
                n
                for n in peer.ip_block.ranges(honour_except=semantics.except_honoured)
                if n.version == family
            ]
            continue
        for pod in peer_pods(inputs, policy, peer, semantics):
            networks += [
                ipaddress.ip_network(ip)
                for ip in pod.ips
                if ipaddress.ip_address(ip).version == family
            ]
    collapsed = ipaddress.collapse_addresses(networks)  # type: ignore[type-var]
    return [str(n) for n in sorted(collapsed)]


def compile_node(
    inputs: PolicyInputs,
    node: str,
    families: Sequence[int],
    faults: Iterable[str] = (),
) -> NodeRuleSet:
    """The rules of ``node`` (the lab's IP ``families``) for ``inputs`` under ``faults``."""
    faults = frozenset(faults)
    semantics = Semantics.for_faults(faults)
    rules = NodeRuleSet()
    enforce = not (IGNORED_ON_NODE_FAULT in faults and node == IGNORED_NODE)
    local = [p for p in inputs.pods() if p.node == node] if enforce else []
    directions = [EGRESS, INGRESS] if semantics.egress_enforced else [INGRESS]
    compiled_policies: set[tuple[str, str]] = set()
    for direction, (base_name, priority) in BASE_CHAINS.items():
        word = DIRECTION_WORD[direction]
        base_rules: list[NftRule] = []
        if semantics.conntrack_replies:
            base_rules.append(NftRule("accept", established=True, comment="replies"))
        if 6 in families:
            base_rules.append(
                NftRule("accept", family=6, neighbour_discovery=True, comment="neighbour discovery")
            )
        dispatch: dict[int, list[tuple[str, str]]] = {f: [] for f in families}
        if direction in directions:
            for pod in sorted(local, key=lambda p: p.key):
                policies = sorted(selecting(inputs, pod, direction), key=lambda p: p.key)
                if not policies:
                    continue
                chain_name = object_name(f"pod-{word}", pod.namespace, pod.name)
                pod_rules = [
                    NftRule(
                        "accept",
                        family=ipaddress.ip_address(ip).version,
                        source=ip if direction == INGRESS else None,
                        destination=ip if direction == EGRESS else None,
                        comment="a pod reaching itself",
                    )
                    for ip in pod.ips
                ]
                for policy in policies:
                    policy_chain = object_name(f"policy-{word}", policy.namespace, policy.name)
                    pod_rules.append(NftRule(f"jump {policy_chain}"))
                    if (direction, policy.key) not in compiled_policies:
                        compiled_policies.add((direction, policy.key))
                        _compile_policy(
                            rules, inputs, policy, direction, local, families, semantics
                        )
                pod_rules.append(
                    NftRule("drop", counter=True, comment=f"{pod.key}: no {word} rule allows it")
                )
                rules.chains[chain_name] = NftChain(chain_name, tuple(pod_rules))
                for ip in pod.ips:
                    version = ipaddress.ip_address(ip).version
                    if version in dispatch:
                        dispatch[version].append((ip, chain_name))
        on = "source" if direction == EGRESS else "destination"
        for family in families:
            map_name = object_name(f"{word}-pods", f"v{family}")
            rules.sets[map_name] = NftSet(
                map_name, "dispatch", family, tuple(sorted(dispatch[family]))
            )
            base_rules.append(NftRule(map_name, family=family, dispatch_on=on))
        rules.chains[base_name] = NftChain(base_name, tuple(base_rules), priority)
    return rules


def _compile_policy(
    rules: NodeRuleSet,
    inputs: PolicyInputs,
    policy: Policy,
    direction: str,
    local: Sequence[Workload],
    families: Sequence[int],
    semantics: Semantics,
) -> None:
    """``policy``'s chain for ``direction`` and the sets it refers to."""
    word = DIRECTION_WORD[direction]
    chain_name = object_name(f"policy-{word}", policy.namespace, policy.name)
    chain_rules: list[NftRule] = []
    # Named ports resolve in the destination pod: for ingress this node's pods the policy
    # selects, for egress any pod of the cluster.
    if direction == INGRESS:
        destinations = [
            p
            for p in local
            if p.namespace == policy.namespace and policy.pod_selector.matches(p.label_map)
        ]
    else:
        destinations = inputs.pods()
    for index, rule in enumerate(policy.rules(direction)):
        base = (policy.namespace, policy.name, word, str(index))
        for family in families:
            peer_set: str | None = None
            if rule.peers:
                peer_set = object_name("peers", *base, f"v{family}")
                networks = rule_peer_networks(inputs, policy, rule, family, semantics)
                rules.sets[peer_set] = NftSet(
                    peer_set, "addresses", family, tuple((n,) for n in networks)
                )
            for clause in _port_clauses(rule, base, family, destinations, rules, semantics):
                chain_rules.append(
                    dataclasses.replace(
                        clause,
                        family=family if (peer_set or clause.named_ports_set) else None,
                        source_set=peer_set if direction == INGRESS else None,
                        destination_set=peer_set if direction == EGRESS else None,
                        comment=f"{policy.key} {word} rule {index}",
                    )
                )
    # Rules that match no family-specific field are the same for every family: written once.
    unique: list[NftRule] = []
    for nft_rule in chain_rules:
        if nft_rule not in unique:
            unique.append(nft_rule)
    rules.chains[chain_name] = NftChain(chain_name, tuple(unique))


def _port_clauses(
    rule: Rule,
    base: tuple[str, ...],
    family: int,
    destinations: Sequence[Workload],
    rules: NodeRuleSet,
    semantics: Semantics,
) -> list[NftRule]:
    """The port part of a rule, one accepting rule per clause (ORed), peers not yet set."""
    if not rule.ports:
        return [NftRule("accept")]
    clauses: list[NftRule] = []
    numbered: dict[str, list[tuple[int, int]]] = {}
    whole: list[str] = []
    named: dict[tuple[str, str], None] = {}
    for spec in rule.ports:
        protocol = spec.protocol.lower()
        if spec.port is None:
            whole.append(protocol)
        elif isinstance(spec.port, str):
            named[(spec.port, spec.protocol)] = None
        else:
            numbered.setdefault(protocol, []).append((spec.port, spec.end_port or spec.port))
    for protocol in dict.fromkeys(whole):
        clauses.append(NftRule("accept", protocol=protocol))
    for protocol, ranges in numbered.items():
        clauses.append(NftRule("accept", protocol=protocol, ports=_merge_ranges(ranges)))
    for name, protocol in named:
        set_name = object_name("ports", *base, name, protocol.lower(), f"v{family}")
        elements: set[tuple[str, str, str]] = set()
        if semantics.named_ports_resolved:
            for pod in destinations:
                for number in pod.resolve(name, protocol):
                    elements |= {
                        (ip, protocol.lower(), str(number))
                        for ip in pod.ips
                        if ipaddress.ip_address(ip).version == family
                    }
        rules.sets[set_name] = NftSet(set_name, "named-ports", family, tuple(sorted(elements)))
        clauses.append(NftRule("accept", named_ports_set=set_name))
    return clauses


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Port ranges sorted and merged where they overlap or touch (nft refuses overlaps)."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def node_paths(inputs: PolicyInputs, packet: Packet) -> list[str]:
    """The nodes whose forward hook a new connection's first packet crosses, in order: the
    source pod's node (unless the packet ends on that node's own stack) and the destination
    pod's node (unless the packet comes from that node's own stack)."""
    source = inputs.pod_at(packet.source)
    destination = inputs.pod_at(packet.destination)
    nodes: list[str] = []
    if source is not None and inputs.node_of_address(packet.destination) != source.node:
        nodes.append(source.node)
    if (
        destination is not None
        and inputs.node_of_address(packet.source) != destination.node
        and destination.node not in nodes
    ):
        nodes.append(destination.node)
    return nodes


def compiled_allows(
    rule_sets: Mapping[str, NodeRuleSet], inputs: PolicyInputs, packet: Packet
) -> bool:
    """Whether every node on ``packet``'s path lets it through (``rule_sets``: node -> its
    compiled rules)."""
    return all(rule_sets[node].admits(packet) for node in node_paths(inputs, packet))
