"""The lab's NetworkPolicy compiler held against the API's semantics: for random policies,
pods and namespaces, every node's compiled nftables rules (run on packets the way the kernel
runs them, ``NodeRuleSet.admits``) decide exactly as ``reference_allows``, the documentation
read literally; plus worked examples (the upstream e2e's shapes), each fault's one change,
and the rendered ``nft`` transactions."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netlab.api.resources.networkpolicies import apply_defaults, spec_causes
from netlab.contract import JSONDict
from netlab.faults import FAULTS
from netlab.netpol.compiler import (
    COMPILER_FAULTS,
    NEIGHBOUR_DISCOVERY,
    NftRule,
    NodeRuleSet,
    compile_node,
    compiled_allows,
    node_paths,
    transaction,
)
from netlab.netpol.engine import ENGINE_FAULTS, InputBuilder
from netlab.netpol.model import (
    NamedPort,
    Packet,
    PolicyInputs,
    Workload,
    parse_policy,
    reference_allows,
)

NODES = ("node-1", "node-2", "node-3")
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
NODE_ADDRESSES = {node: (f"172.18.0.{i + 2}", f"10.244.{i}.1") for i, node in enumerate(NODES)}
EXTERNAL = ("192.168.5.5", "172.18.0.1")
PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP")
LABEL_VALUES = ("a", "b", "c")


def pod(namespace: str, name: str, node: str, ip: str, labels: dict[str, str]) -> Workload:
    http = 80 if name != "c" else 81
    return Workload(
        namespace=namespace,
        name=name,
        labels=tuple(sorted({"pod": name, **labels}.items())),
        ips=(ip,),
        node=node,
        ports=(
            NamedPort("serve-80-tcp", "TCP", 80),
            NamedPort("serve-81-udp", "UDP", 81),
            NamedPort("http", "TCP", http),
        ),
    )


def inputs_of(
    policies: list[JSONDict],
    placement: dict[str, str],
    pod_labels: dict[str, dict[str, str]],
    ns_labels: dict[str, dict[str, str]],
) -> PolicyInputs:
    workloads = []
    for ns_index, namespace in enumerate(NAMESPACES):
        for pod_index, name in enumerate(PODS):
            key = f"{namespace}/{name}"
            node = placement[key]
            node_index = NODES.index(node)
            ip = f"10.244.{node_index}.{10 + ns_index * 3 + pod_index}"
            workloads.append(pod(namespace, name, node, ip, pod_labels.get(key, {})))
    return PolicyInputs(
        policies=tuple(parse_policy(apply_defaults(p)) for p in policies),
        workloads=tuple(workloads),
        namespaces={
            ns: {"kubernetes.io/metadata.name": ns, "ns": ns, **ns_labels.get(ns, {})}
            for ns in NAMESPACES
        },
        node_addresses=NODE_ADDRESSES,
    )


def compiled(inputs: PolicyInputs, faults: tuple[str, ...] = ()) -> dict[str, NodeRuleSet]:
    return {node: compile_node(inputs, node, (4,), faults) for node in NODES}


def addresses(inputs: PolicyInputs) -> list[str]:
    return (
        [ip for w in inputs.workloads for ip in w.ips]
        + [a for node in NODES for a in NODE_ADDRESSES[node]]
        + list(EXTERNAL)
    )


# --- random policies -----------------------------------------------------------------------


def selectors(keys: tuple[str, ...]) -> st.SearchStrategy[JSONDict]:
    requirement = st.one_of(
        st.builds(
            lambda k, op, vs: {"key": k, "operator": op, "values": vs},
            st.sampled_from(keys),
            st.sampled_from(["In", "NotIn"]),
            st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True),
        ),
        st.builds(
            lambda k, op: {"key": k, "operator": op},
            st.sampled_from(keys),
            st.sampled_from(["Exists", "DoesNotExist"]),
        ),
    )
    return st.builds(
        lambda labels, exprs: {
            **({"matchLabels": labels} if labels else {}),
            **({"matchExpressions": exprs} if exprs else {}),
        },
        st.dictionaries(st.sampled_from(keys), st.sampled_from(LABEL_VALUES), max_size=2),
        st.lists(requirement, max_size=2),
    )


POD_KEYS = ("pod", "role", "tier")
NS_KEYS = ("ns", "team", "kubernetes.io/metadata.name")


def ns_selectors() -> st.SearchStrategy[JSONDict]:
    by_name = st.builds(
        lambda names: {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}
            ]
        },
        st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=2, unique=True),
    )
    return st.one_of(
        selectors(NS_KEYS),
        by_name,
        st.builds(lambda n: {"matchLabels": {"ns": n}}, st.sampled_from(NAMESPACES)),
    )


def pod_selectors() -> st.SearchStrategy[JSONDict]:
    return st.one_of(
        selectors(POD_KEYS),
        st.builds(lambda n: {"matchLabels": {"pod": n}}, st.sampled_from(PODS)),
    )


EXCEPT_CANDIDATES = (
    "10.244.1.0/24",
    "10.244.0.0/24",
    "10.244.2.12/32",
    "10.244.1.16/30",
    "10.244.0.8/29",
    "192.168.5.0/24",
)


@st.composite
def ip_blocks(draw: st.DrawFn) -> JSONDict:
    """A cidr and, most of the time, excepts that are strict subsets of it (so the excepts
    cut out pods and outside addresses the packets come from)."""
    cidr = draw(st.sampled_from(["10.244.0.0/16", "0.0.0.0/0", "192.168.0.0/16", "10.244.1.0/24"]))
    network = ipaddress.ip_network(cidr)
    fitting = [
        c
        for c in EXCEPT_CANDIDATES
        if ipaddress.ip_network(c).subnet_of(network)  # type: ignore[arg-type]
        and ipaddress.ip_network(c).prefixlen > network.prefixlen
    ]
    excepts = draw(st.lists(st.sampled_from(fitting), max_size=2, unique=True)) if fitting else []
    return {"cidr": cidr, **({"except": excepts} if excepts else {})}


peers = st.one_of(
    st.builds(lambda s: {"podSelector": s}, pod_selectors()),
    st.builds(lambda s: {"namespaceSelector": s}, ns_selectors()),
    st.builds(
        lambda p, n: {"podSelector": p, "namespaceSelector": n}, pod_selectors(), ns_selectors()
    ),
    st.builds(lambda b: {"ipBlock": b}, ip_blocks()),
)


@st.composite
def ports(draw: st.DrawFn) -> JSONDict:
    protocol = draw(st.sampled_from([None, "TCP", "UDP", "SCTP"]))
    port = draw(st.sampled_from([None, 80, 81, "serve-80-tcp", "serve-81-udp", "http", "range"]))
    entry: JSONDict = {} if protocol is None else {"protocol": protocol}
    if port == "range":
        entry.update(port=80, endPort=draw(st.sampled_from([80, 81, 82])))
    elif port is not None:
        entry["port"] = port
    return entry


@st.composite
def rules(draw: st.DrawFn, peers_key: str) -> JSONDict:
    rule: JSONDict = {}
    peer_list = draw(st.one_of(st.none(), st.lists(peers, max_size=3)))
    if peer_list is not None:
        rule[peers_key] = peer_list
    port_list = draw(st.one_of(st.none(), st.lists(ports(), max_size=3)))
    if port_list is not None:
        rule["ports"] = port_list
    return rule


@st.composite
def policies(draw: st.DrawFn, index: int) -> JSONDict:
    spec: JSONDict = {"podSelector": draw(st.one_of(st.just({}), pod_selectors()))}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    ingress = draw(st.one_of(st.none(), st.lists(rules("from"), max_size=3)))
    egress = draw(st.one_of(st.none(), st.lists(rules("to"), max_size=3)))
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "metadata": {"name": f"p{index}", "namespace": draw(st.sampled_from(NAMESPACES))},
        "spec": spec,
    }


@st.composite
def clusters(draw: st.DrawFn) -> PolicyInputs:
    count = draw(st.integers(0, 4))
    drawn = [draw(policies(i)) for i in range(count)]
    for policy in drawn:
        assert not spec_causes(apply_defaults(policy)["spec"]), policy  # valid by construction
    placement = {f"{ns}/{name}": draw(st.sampled_from(NODES)) for ns in NAMESPACES for name in PODS}
    pod_labels = {
        f"{ns}/{name}": draw(
            st.dictionaries(
                st.sampled_from(("role", "tier")), st.sampled_from(LABEL_VALUES), max_size=2
            )
        )
        for ns in NAMESPACES
        for name in PODS
    }
    ns_labels = {
        ns: draw(st.dictionaries(st.just("team"), st.sampled_from(LABEL_VALUES), max_size=1))
        for ns in NAMESPACES
    }
    return inputs_of(drawn, placement, pod_labels, ns_labels)


def every_packet(cluster: PolicyInputs) -> list[Packet]:
    """Every first packet the truth tables ask about: each ordered pair of pods, pods to and
    from node and outside addresses, over TCP and UDP to ports 80 and 81, SCTP and ICMP."""
    pods = [ip for w in cluster.workloads for ip in w.ips]
    others = [a for node in NODES for a in NODE_ADDRESSES[node]] + list(EXTERNAL)
    pairs = [(s, d) for s in pods for d in pods + others] + [(s, d) for s in others for d in pods]
    kinds = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81), ("SCTP", 80), ("ICMP", 0)]
    return [Packet(s, d, proto, port) for s, d in pairs for proto, port in kinds]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster=clusters())
def test_compiled_rules_decide_as_the_api_semantics(cluster: PolicyInputs) -> None:
    rule_sets = compiled(cluster)
    wrong = [
        (packet, expected)
        for packet in every_packet(cluster)
        if compiled_allows(rule_sets, cluster, packet)
        != (expected := reference_allows(cluster, packet))
    ]
    assert not wrong, (
        f"{len(wrong)} decisions differ, e.g. {wrong[0][0]}: the API says {wrong[0][1]}; path "
        f"{node_paths(cluster, wrong[0][0])}; policies {cluster.policies}"
    )


@settings(max_examples=60, deadline=None)
@given(cluster=clusters())
def test_replies_of_any_connection_pass(cluster: PolicyInputs) -> None:
    """conntrack: once a connection exists, its packets pass every node whatever the policies
    (a reply is the same connection, established)."""
    for rules in compiled(cluster).values():
        for source in [ip for w in cluster.workloads for ip in w.ips]:
            packet = Packet(source, "192.168.5.5", "TCP", 80)
            assert rules.admits(packet, established=True)


# --- worked examples ---------------------------------------------------------------------------

EVERY_NODE = {
    f"{ns}/{name}": NODES[(i + j) % 3]
    for i, ns in enumerate(NAMESPACES)
    for j, name in enumerate(PODS)
}


def cluster_with(
    *policies: JSONDict, ns_labels: dict[str, dict[str, str]] | None = None
) -> PolicyInputs:
    return inputs_of(list(policies), EVERY_NODE, {}, ns_labels or {})


def ip_of(inputs: PolicyInputs, key: str) -> str:
    return next(w.ips[0] for w in inputs.workloads if w.key == key)


def table(
    inputs: PolicyInputs, faults: tuple[str, ...] = (), protocol: str = "TCP", port: int = 80
) -> dict[tuple[str, str], bool]:
    """Every ordered pod pair -> allowed (the upstream suite's truth table, 9 x 9)."""
    rule_sets = compiled(inputs, faults)
    keys = [w.key for w in inputs.workloads]
    return {
        (a, b): compiled_allows(
            rule_sets, inputs, Packet(ip_of(inputs, a), ip_of(inputs, b), protocol, port)
        )
        for a in keys
        for b in keys
    }


def netpol(namespace: str, name: str, **spec: Any) -> JSONDict:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": {"podSelector": {}, **spec}}


def test_default_deny_ingress_isolates_a_namespace_but_not_its_own_pods_to_themselves() -> None:
    inputs = cluster_with(netpol("x", "deny"))
    cells = table(inputs)
    for (source, destination), allowed in cells.items():
        wanted = not destination.startswith("x/") or source == destination
        assert allowed == wanted, (source, destination)


def test_allow_from_one_namespace_by_its_name_label() -> None:
    allow = netpol(
        "x",
        "from-y",
        ingress=[
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}
        ],
    )
    cells = table(cluster_with(allow))
    assert cells[("y/a", "x/b")]
    assert not cells[("z/a", "x/b")]
    assert not cells[("x/a", "x/b")]


def test_named_port_resolves_per_destination_pod() -> None:
    allow = netpol("x", "http", ingress=[{"ports": [{"port": "http"}]}])
    inputs = cluster_with(allow)
    # x/a and x/b serve "http" on 80, x/c on 81.
    assert table(inputs, port=80)[("y/a", "x/a")]
    assert not table(inputs, port=80)[("y/a", "x/c")]
    assert table(inputs, port=81)[("y/a", "x/c")]
    broken = table(inputs, ("netpol-named-ports-unresolved",), port=80)
    assert not broken[("y/a", "x/a")]


def test_egress_named_port_resolves_in_the_destination_pod() -> None:
    allow = netpol(
        "x",
        "out",
        policyTypes=["Egress"],
        egress=[{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}],
    )
    inputs = cluster_with(allow)
    assert table(inputs, protocol="UDP", port=81)[("x/a", "y/b")]
    assert not table(inputs, protocol="UDP", port=80)[("x/a", "y/b")]
    assert not table(inputs, protocol="TCP", port=81)[("x/a", "y/b")]


def test_ip_block_except_and_its_fault() -> None:
    inputs0 = cluster_with()
    target = ip_of(inputs0, "y/b")
    allow = netpol(
        "x",
        "cidr",
        policyTypes=["Egress"],
        egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{target}/32"]}}]}],
    )
    inputs = cluster_with(allow)
    assert not table(inputs)[("x/a", "y/b")]
    assert table(inputs)[("x/a", "y/a")]
    assert table(inputs, ("netpol-except-ignored",))[("x/a", "y/b")]


def test_pod_and_namespace_selector_is_an_and_and_its_faults() -> None:
    both = netpol(
        "x",
        "and",
        ingress=[
            {
                "from": [
                    {
                        "podSelector": {"matchLabels": {"pod": "a"}},
                        "namespaceSelector": {"matchLabels": {"ns": "y"}},
                    }
                ]
            }
        ],
    )
    inputs = cluster_with(both)
    healthy = table(inputs)
    assert healthy[("y/a", "x/b")]
    assert not healthy[("y/b", "x/b")]
    assert not healthy[("x/a", "x/b")]
    as_or = table(inputs, ("netpol-peer-and-as-or",))
    assert as_or[("y/b", "x/b")]
    assert as_or[("x/a", "x/b")]
    ns_as_pod = table(inputs, ("netpol-namespace-selector-as-pod-selector",))
    assert not ns_as_pod[("y/a", "x/b")]


def test_union_of_policies_and_egress_with_ingress() -> None:
    first = netpol("x", "one", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}])
    second = netpol(
        "x", "two", ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]
    )
    deny_out = netpol("x", "no-out", policyTypes=["Egress"])
    cells = table(cluster_with(first, second, deny_out))
    assert not cells[("x/a", "x/c")]  # x/a may not send: egress isolated without rules
    cells = table(cluster_with(first, second))
    assert cells[("x/a", "x/c")]
    assert cells[("x/b", "x/c")]
    assert not cells[("x/c", "x/a")] or ("x/c", "x/a") == ("x/a", "x/a")
    assert table(cluster_with(first, second, deny_out), ("netpol-egress-ignored",))[("x/a", "x/c")]


def test_policies_ignored_on_one_node_only() -> None:
    inputs = cluster_with(netpol("x", "deny"))
    healthy = table(inputs)
    broken = table(inputs, ("netpol-ignored-on-node",))
    differing = {cell for cell in healthy if healthy[cell] != broken[cell]}
    assert differing
    assert {EVERY_NODE[destination] for _, destination in differing} == {"node-2"}


def test_replies_dropped_fault_judges_replies_as_new_traffic() -> None:
    # x denies all ingress; x/a opens a connection to y/b, which y allows.
    inputs = cluster_with(netpol("x", "deny"))
    reply = Packet(ip_of(inputs, "y/b"), ip_of(inputs, "x/a"), "TCP", 40000)
    node = EVERY_NODE["x/a"]
    assert compiled(inputs)[node].admits(reply, established=True)
    assert not compiled(inputs, ("netpol-replies-dropped",))[node].admits(reply, established=True)


def test_node_traffic_never_crosses_forward_and_other_nodes_are_outside() -> None:
    inputs = cluster_with(netpol("x", "deny"))
    own_node = NODE_ADDRESSES[EVERY_NODE["x/a"]][0]
    other_node = NODE_ADDRESSES[EVERY_NODE["x/b"]][0]
    assert node_paths(inputs, Packet(own_node, ip_of(inputs, "x/a"), "TCP", 80)) == []
    assert reference_allows(inputs, Packet(own_node, ip_of(inputs, "x/a"), "TCP", 80))
    assert not reference_allows(inputs, Packet(other_node, ip_of(inputs, "x/a"), "TCP", 80))


def test_labels_not_followed_fault_keeps_first_labels() -> None:
    def pod_object(labels: dict[str, str]) -> JSONDict:
        return {
            "metadata": {"namespace": "x", "name": "a", "uid": "u1", "labels": labels},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.5"}]},
        }

    namespace = {"metadata": {"name": "x", "uid": "n1", "labels": {"ns": "x"}}}
    for faults, wanted in (
        (frozenset(), {"role": "new"}),
        (frozenset({"netpol-labels-not-followed"}), {"role": "old"}),
    ):
        builder = InputBuilder(faults)
        builder.build(([], [pod_object({"role": "old"})], [namespace]))
        after = builder.build(([], [pod_object({"role": "new"})], [namespace]))
        assert after.workloads[0].label_map == wanted


def test_deleted_policy_fault_keeps_enforcing_it() -> None:
    policy = {
        "metadata": {"namespace": "x", "name": "deny", "uid": "p1"},
        "spec": {"podSelector": {}},
    }
    for faults, remaining in ((frozenset(), 0), (frozenset({"netpol-deleted-policy-enforced"}), 1)):
        builder = InputBuilder(faults)
        builder.build(([policy], [], []))
        assert len(builder.build(([], [], [])).policies) == remaining


def test_every_netpol_fault_is_implemented_by_the_compiler_or_the_engine() -> None:
    named = {fault for fault in FAULTS if fault.startswith("netpol-")}
    assert named == COMPILER_FAULTS | ENGINE_FAULTS
    assert not COMPILER_FAULTS & ENGINE_FAULTS


def test_dual_stack_pods_get_rules_in_both_families() -> None:
    pods = (
        Workload("x", "a", (("pod", "a"),), ("10.244.0.5", "fd00:10:244::5"), "node-1"),
        Workload("y", "b", (("pod", "b"),), ("10.244.1.5", "fd00:10:244:1::5"), "node-2"),
    )
    allow = netpol(
        "x", "from-y", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]
    )
    inputs = PolicyInputs(
        policies=(parse_policy(apply_defaults(allow)),),
        workloads=pods,
        namespaces={"x": {"ns": "x"}, "y": {"ns": "y"}},
    )
    rules = compile_node(inputs, "node-1", (4, 6))
    text = transaction(None, rules)
    assert (
        "add element inet netlab-netpol ingress-pods/v6 { fd00:10:244::5 : jump pod-ingress/x/a }"
        in text
    )
    assert "ip6 saddr @peers/x/from-y/ingress/0/v6 accept" in text
    assert (
        "add element inet netlab-netpol peers/x/from-y/ingress/0/v6 { fd00:10:244:1::5/128 }"
        in text
    )
    # Neighbour discovery into an isolated pod passes (its neighbours could not answer else).
    assert rules.admits(Packet("fd00:10:244::9", "fd00:10:244::5", NEIGHBOUR_DISCOVERY))
    assert not rules.admits(Packet("fd00:10:244::9", "fd00:10:244::5", "ICMP"))
    for source, destination in (
        ("10.244.1.5", "10.244.0.5"),
        ("fd00:10:244:1::5", "fd00:10:244::5"),
    ):
        assert rules.admits(Packet(source, destination, "TCP", 80))
        assert not rules.admits(
            Packet("192.168.5.5" if "." in source else "fd00::99", destination, "TCP", 80)
        )


# --- rendering ---------------------------------------------------------------------------------


def test_rule_text_is_nft_syntax() -> None:
    rule = NftRule(
        "accept",
        family=4,
        source_set="peers/x/p/ingress/0/v4",
        protocol="tcp",
        ports=((80, 80), (1000, 2000)),
        comment="x/p ingress rule 0",
    )
    assert rule.text() == (
        "ip saddr @peers/x/p/ingress/0/v4 meta l4proto tcp th dport { 80, 1000-2000 } accept "
        'comment "x/p ingress rule 0"'
    )
    dispatch = NftRule("ingress-pods/v6", family=6, dispatch_on="destination")
    assert dispatch.text() == "ip6 daddr vmap @ingress-pods/v6"


def test_transactions_write_only_what_changed_and_delete_after_unreferencing() -> None:
    empty = compile_node(cluster_with(), "node-1", (4,))
    first = transaction(None, empty)
    assert first.splitlines()[:3] == [
        "add table inet netlab-netpol",
        "delete table inet netlab-netpol",
        "add table inet netlab-netpol",
    ]
    assert "type filter hook forward priority -10; policy accept;" in first
    assert transaction(empty, compile_node(cluster_with(), "node-1", (4,))) == ""
    deny = compile_node(cluster_with(netpol("x", "deny")), "node-1", (4,))
    added = transaction(empty, deny)
    assert "flush chain inet netlab-netpol egress" not in added  # egress did not change
    assert "add element inet netlab-netpol ingress-pods/v4" in added
    removed = transaction(deny, empty).splitlines()
    flushes = [i for i, line in enumerate(removed) if line.startswith("flush map")]
    deletes = [i for i, line in enumerate(removed) if line.startswith("delete chain")]
    assert flushes
    assert deletes
    assert max(flushes) < min(deletes)
