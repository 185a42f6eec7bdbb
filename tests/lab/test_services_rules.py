"""The Service data plane's pieces without namespaces: kube-proxy's rules as the lab writes
them (chain names, spread, masquerade, rejects, NodePorts, the proxy faults), the cluster DNS's
answers and its Service's name, the kubelet's Service environment, resolv.conf (with and
without a cluster DNS) and hostPort admission, and the CNI config's faults."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from netlab.contract import JSONDict
from netlab.dataplane.cni import NodeCNI
from netlab.dataplane.proxy import jump_rules_input, node_rules, service_ports
from netlab.dns import (
    build_records,
    dns_service_name,
    kube_dns_endpoint_slice,
    kube_dns_service,
    respond,
)
from netlab.kubelet.containers import resolv_conf, service_environment, wants_cluster_dns
from netlab.kubelet.hostports import REJECT_MESSAGE, host_port_conflict
from netlab.spec import LabSpec

pytestmark = pytest.mark.needs_lab


def svc(name: str, ips: list[str], **spec: Any) -> JSONDict:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "selector": {"app": name},
            "ports": [
                {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "udp", "port": 81, "protocol": "UDP", "targetPort": 8081},
            ],
            **spec,
        },
    }


def endpoint_slice(service: str, family: str, endpoints: list[tuple[str, str, bool]]) -> JSONDict:
    return {
        "metadata": {
            "name": f"{service}-x",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
            for ip, node, ready in endpoints
        ],
        "ports": [
            {"name": "tcp", "port": 8080, "protocol": "TCP"},
            {"name": "udp", "port": 8081, "protocol": "UDP"},
        ],
    }


KUBE_DNS = {
    "metadata": {"name": "kube-dns", "namespace": "kube-system"},
    "spec": {
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
    },
}
BACKENDS = [("10.244.0.5", "node-1", True), ("10.244.1.5", "node-2", True)]


def rules_for(
    services: list[JSONDict], slices: list[JSONDict], node: str = "node-1", **kwargs: Any
) -> dict[str, list[str]]:
    ports = service_ports(services, slices, 4)
    built = node_rules(ports, node=node, cluster_cidrs=["10.244.0.0/16"], **kwargs)
    return {
        table: [rule for rules in chains.values() for rule in rules]
        for table, chains in built.chains.items()
    }


def test_chain_names_are_kube_proxys() -> None:
    """kube-dns's chains carry the names every kube-proxy cluster shows."""
    [dns_udp, dns_tcp] = service_ports([KUBE_DNS], [], 4)
    assert dns_udp.chain("SVC") == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert dns_tcp.chain("SVC") == "KUBE-SVC-ERIFXISQEP7F7OF4"


def test_cluster_ip_spread_masquerade_and_hairpin() -> None:
    rules = rules_for([svc("web", ["10.96.5.5"])], [endpoint_slice("web", "IPv4", BACKENDS)])
    nat = rules["nat"]
    [port] = [p for p in service_ports([svc("web", ["10.96.5.5"])], [], 4) if p.protocol == "TCP"]
    chain = port.chain("SVC")
    assert (
        f'-A KUBE-SERVICES -m comment --comment "ns/web:tcp cluster IP" -d 10.96.5.5/32 '
        f"-p tcp -m tcp --dport 80 -j {chain}"
    ) in nat
    # Only traffic from outside the pod range is masqueraded on its way to a cluster IP.
    assert any(r.startswith(f"-A {chain} ! -s 10.244.0.0/16 ") for r in nat)
    spread = [r for r in nat if r.startswith(f"-A {chain} ") and "KUBE-SEP-" in r]
    assert len(spread) == 2
    assert "--mode random --probability 0.50000000000" in spread[0]
    assert "statistic" not in spread[1]
    # Each endpoint masquerades its own traffic (hairpin), then DNATs.
    assert "-A KUBE-SEP-" in "\n".join(nat)
    assert any("-s 10.244.0.5/32" in r and "KUBE-MARK-MASQ" in r for r in nat)
    assert any("DNAT --to-destination 10.244.1.5:8080" in r for r in nat)
    services_chain = [r for r in nat if r.startswith("-A KUBE-SERVICES ")]
    assert services_chain[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    assert rules["filter"] == []


def test_no_ready_endpoint_rejects_and_readiness_is_followed() -> None:
    unready = [("10.244.0.5", "node-1", False)]
    rules = rules_for([svc("web", ["10.96.5.5"])], [endpoint_slice("web", "IPv4", unready)])
    assert (
        '-A KUBE-SERVICES -m comment --comment "ns/web:tcp has no endpoints" -d 10.96.5.5/32 '
        "-p tcp -m tcp --dport 80 -j REJECT"
    ) in rules["filter"]
    assert not any("DNAT" in r for r in rules["nat"])
    stale = rules_for(
        [svc("web", ["10.96.5.5"])],
        [endpoint_slice("web", "IPv4", unready)],
        faults=frozenset({"stale-endpoints"}),
    )
    assert any("DNAT --to-destination 10.244.0.5:8080" in r for r in stale["nat"])
    assert stale["filter"] == []


def test_node_ports_and_their_faults() -> None:
    service = svc("web", ["10.96.5.5"], type="NodePort", externalTrafficPolicy="Cluster")
    for port in service["spec"]["ports"]:
        port["nodePort"] = 30000 + port["port"]
    slices = [endpoint_slice("web", "IPv4", BACKENDS)]
    nat = rules_for([service], slices)["nat"]
    assert any(r.startswith("-A KUBE-NODEPORTS") and "--dport 30080" in r for r in nat)
    assert any("masquerade traffic for ns/web:tcp external destinations" in r for r in nat)
    missing = rules_for(
        [service], slices, node="node-2", faults=frozenset({"nodeport-missing-on-node"})
    )["nat"]
    assert not any("KUBE-NODEPORTS" in r for r in missing)
    elsewhere = rules_for(
        [service], slices, node="node-1", faults=frozenset({"nodeport-missing-on-node"})
    )["nat"]
    assert any(r.startswith("-A KUBE-NODEPORTS") for r in elsewhere)
    local = svc("web", ["10.96.5.5"], type="NodePort", externalTrafficPolicy="Local")
    local["spec"]["ports"] = [dict(service["spec"]["ports"][0])]
    nat = rules_for([local], slices, node="node-2")["nat"]
    svl = [r for r in nat if r.startswith("-A KUBE-SVL-")]
    assert len(svl) == 1
    assert "statistic" not in svl[0]  # node-2's own endpoint only


def web_rules_without_and_with(fault: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The rules for Service ``web`` (cluster IP 10.96.5.5, endpoints `BACKENDS`): healthy, then
    under ``fault``."""
    services, slices = [svc("web", ["10.96.5.5"])], [endpoint_slice("web", "IPv4", BACKENDS)]
    return rules_for(services, slices), rules_for(services, slices, faults=frozenset({fault}))


def test_service_masquerade_fault_marks_every_cluster_ip_connection() -> None:
    healthy, faulty = web_rules_without_and_with("service-masquerade")
    marks = [r for r in faulty["nat"] if r.startswith("-A KUBE-SVC-") and "KUBE-MARK-MASQ" in r]
    assert marks
    assert not any("! -s" in r for r in marks)
    assert any("! -s 10.244.0.0/16" in r for r in healthy["nat"])


def test_service_resets_fault_resets_a_share_of_new_tcp_connections_to_cluster_ips() -> None:
    healthy, faulty = web_rules_without_and_with("service-resets")
    [tcp] = [p for p in service_ports([svc("web", ["10.96.5.5"])], [], 4) if p.protocol == "TCP"]
    svc_chain, reset_chain = tcp.chain("SVC"), tcp.chain("RST")
    # TCP only (a reset is TCP's): 30 % of the Service's new connections go to a closed port of
    # an endpoint, whose kernel resets them as the connection's own reply (a REJECT after the
    # DNAT would answer from the endpoint's address, which the client ignores).
    added = [r for r in faulty["nat"] if r not in healthy["nat"]]
    assert added == [
        f'-A {svc_chain} -m comment --comment "ns/web:tcp reset fault" -m statistic --mode '
        f"random --probability 0.3 -j {reset_chain}",
        f'-A {reset_chain} -m comment --comment "ns/web:tcp reset fault" -s 10.244.0.5/32 '
        "-j KUBE-MARK-MASQ",
        f'-A {reset_chain} -m comment --comment "ns/web:tcp reset fault" -p tcp -j DNAT '
        "--to-destination 10.244.0.5:1",
    ]
    # Before the spread over the endpoints, after the masquerade of outside traffic.
    chain_rules = [r for r in faulty["nat"] if r.startswith(f"-A {svc_chain} ")]
    assert "KUBE-MARK-MASQ" in chain_rules[0]
    assert reset_chain in chain_rules[1]
    assert faulty["filter"] == healthy["filter"] == []


def test_restore_document_flushes_declared_and_deletes_stale_chains() -> None:
    ports = service_ports([svc("web", ["10.96.5.5"])], [endpoint_slice("web", "IPv4", BACKENDS)], 4)
    rules = node_rules(ports, node="node-1", cluster_cidrs=["10.244.0.0/16"])
    document = rules.restore_input({"nat": {"KUBE-SVC-GONEGONEGONEGONE"}})
    assert document.startswith("*nat\n:KUBE-SERVICES - [0:0]\n")
    assert ":KUBE-SVC-GONEGONEGONEGONE - [0:0]" in document
    assert "-X KUBE-SVC-GONEGONEGONEGONE" in document
    assert document.count("COMMIT") == 2
    jumps = jump_rules_input()
    assert "-I PREROUTING 1 " in jumps
    assert "-I POSTROUTING 1 " in jumps


def test_ipv6_rules() -> None:
    service = svc("web", ["fd00:10:96::55"])
    ports = service_ports(
        [service], [endpoint_slice("web", "IPv6", [("fd00:10:244::5", "node-1", True)])], 6
    )
    nat = [
        r
        for chain in node_rules(ports, node="node-1", cluster_cidrs=["fd00:10:244::/56"])
        .chains["nat"]
        .values()
        for r in chain
    ]
    assert any("-d fd00:10:96::55/128" in r for r in nat)
    assert any("DNAT --to-destination [fd00:10:244::5]:8080" in r for r in nat)
    assert service_ports([service], [], 4) == []


# --- cluster DNS -----------------------------------------------------------------------------


def ask(records: Any, name: str, kind: str = "A") -> dns.message.Message:
    wire = respond(dns.message.make_query(name, kind).to_wire(), records, max_size=512)
    assert wire is not None
    return dns.message.from_wire(wire)


def test_dns_answers() -> None:
    headless = svc("db", ["None"], clusterIP="None")
    records = build_records(
        [svc("web", ["10.96.5.5", "fd00:10:96::55"]), headless],
        [
            endpoint_slice(
                "db", "IPv4", [("10.244.0.7", "node-1", True), ("10.244.1.7", "node-2", False)]
            )
        ],
        service_cidrs=["10.96.0.0/12"],
    )
    answer = ask(records, "web.ns.svc.cluster.local")
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA
    assert [r.to_text() for r in answer.answer] == ["web.ns.svc.cluster.local. 5 IN A 10.96.5.5"]
    assert "fd00:10:96::55" in ask(records, "web.ns.svc.cluster.local", "AAAA").to_text()
    assert "10.244.0.7" in ask(records, "db.ns.svc.cluster.local").to_text()
    assert "10.244.1.7" not in ask(records, "db.ns.svc.cluster.local").to_text()  # not ready
    srv = ask(records, "_tcp._tcp.web.ns.svc.cluster.local", "SRV")
    assert "0 100 80 web.ns.svc.cluster.local." in srv.to_text()
    assert ask(records, "nope.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask(records, "example.com").rcode() == dns.rcode.REFUSED
    pod = ask(records, "10-244-1-5.ns.pod.cluster.local")
    assert "10.244.1.5" in pod.to_text()
    nodata = ask(records, "db.ns.svc.cluster.local", "AAAA")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    wrong = build_records(
        [svc("web", ["10.96.5.5"])], [], service_cidrs=["10.96.0.0/12"], wrong_addresses=True
    )
    assert "10.111.250.250" in ask(wrong, "web.ns.svc.cluster.local").to_text()
    formerr = respond(b"\x12\x34" + b"\xff" * 14, records, max_size=512)
    assert formerr is not None
    assert formerr[:2] == b"\x12\x34"
    assert formerr[3] & 0x0F == dns.rcode.FORMERR
    assert respond(b"\x00\x01", records, max_size=512) is None


# --- kubelet: Service environment, resolv.conf, hostPort admission ----------------------------


def test_service_environment() -> None:
    services = [
        svc("web-front", ["10.96.5.5"]),
        svc("db", ["None"], clusterIP="None"),
        {
            **svc("kubernetes", ["10.96.0.1"]),
            "metadata": {"name": "kubernetes", "namespace": "default"},
        },
        svc("six", ["fd00:10:96::6"]),
    ]
    variables = service_environment(services, "ns", enable_service_links=True)
    assert variables["WEB_FRONT_SERVICE_HOST"] == "10.96.5.5"
    assert variables["WEB_FRONT_SERVICE_PORT"] == "80"
    assert variables["WEB_FRONT_SERVICE_PORT_UDP"] == "81"
    assert variables["WEB_FRONT_PORT"] == "tcp://10.96.5.5:80"
    assert variables["WEB_FRONT_PORT_81_UDP"] == "udp://10.96.5.5:81"
    assert variables["WEB_FRONT_PORT_81_UDP_PROTO"] == "udp"
    assert variables["WEB_FRONT_PORT_81_UDP_PORT"] == "81"
    assert variables["WEB_FRONT_PORT_81_UDP_ADDR"] == "10.96.5.5"
    assert variables["SIX_PORT"] == "tcp://[fd00:10:96::6]:80"
    assert variables["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert not any(k.startswith("DB_") for k in variables)
    off = service_environment(services, "ns", enable_service_links=False)
    assert set(off) == {k for k in variables if k.startswith("KUBERNETES_")}


def test_resolv_conf_per_dns_policy(tmp_path: Any) -> None:
    spec = LabSpec(name="rc", state_root=tmp_path)
    cluster = resolv_conf({}, "team", spec, host_network=False)
    assert cluster.splitlines()[0].startswith(
        "search team.svc.cluster.local svc.cluster.local cluster.local"
    )
    assert "nameserver 10.96.0.10" in cluster
    assert cluster.endswith("options ndots:5\n")
    on_host = resolv_conf({"dnsPolicy": "ClusterFirstWithHostNet"}, "team", spec, host_network=True)
    assert "nameserver 10.96.0.10" in on_host
    assert "10.96.0.10" not in resolv_conf({}, "team", spec, host_network=True)
    custom = resolv_conf(
        {
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["10.1.1.1"],
                "searches": ["a.b"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
            },
        },
        "team",
        spec,
        host_network=False,
    )
    assert custom == "search a.b\nnameserver 10.1.1.1\noptions ndots:2 edns0\n"
    six = LabSpec(name="rc6", ip_family="ipv6", state_root=tmp_path)
    assert "nameserver fd00:10:96::a" in resolv_conf({}, "team", six, host_network=False)


def test_without_cluster_dns_cluster_first_pods_get_the_nodes_resolv_conf(tmp_path: Any) -> None:
    """As kubelet without clusterDNS does (dns.go: podDNSCluster falls through to podDNSHost):
    a ClusterFirst pod's resolv.conf is exactly a Default pod's."""
    spec = LabSpec(name="rc", state_root=tmp_path, faults=frozenset({"no-cluster-dns"}))
    fallback = resolv_conf({}, "team", spec, host_network=False)
    assert fallback == resolv_conf({"dnsPolicy": "Default"}, "team", spec, host_network=False)
    assert "svc.cluster.local" not in fallback
    assert "10.96.0.10" not in fallback
    assert wants_cluster_dns({}, host_network=False)
    assert not wants_cluster_dns({"dnsPolicy": "Default"}, host_network=False)
    assert not wants_cluster_dns({}, host_network=True)


def test_the_dns_service_renamed_keeps_its_address(tmp_path: Any) -> None:
    renamed = LabSpec(name="rn", state_root=tmp_path, faults=frozenset({"dns-service-renamed"}))
    assert dns_service_name(LabSpec(name="rn", state_root=tmp_path)) == "kube-dns"
    name = dns_service_name(renamed)
    assert name == "rke2-coredns-rke2-coredns"
    service = kube_dns_service("10.96.0.10", name)
    assert service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    endpoints = kube_dns_endpoint_slice("10.244.0.53", "node-1", name)
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == name
    # kubelet still names the same address: the pods' resolv.conf does not change.
    assert resolv_conf({}, "team", renamed, host_network=False) == resolv_conf(
        {}, "team", LabSpec(name="rn", state_root=tmp_path), host_network=False
    )


def _with_ports(*ports: JSONDict, host_network: bool = False) -> JSONDict:
    return {
        "spec": {"hostNetwork": host_network, "containers": [{"name": "c", "ports": list(ports)}]}
    }


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ({"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}, True),
        (
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 80, "hostPort": 8080, "protocol": "UDP"},
            False,
        ),
        (
            {"containerPort": 80, "hostPort": 8080, "hostIP": "172.18.0.2"},
            {"containerPort": 80, "hostPort": 8080},
            True,
        ),
        (
            {"containerPort": 80, "hostPort": 8080, "hostIP": "172.18.0.2"},
            {"containerPort": 80, "hostPort": 8080, "hostIP": "172.18.0.3"},
            False,
        ),
        ({"containerPort": 80}, {"containerPort": 80}, False),
    ],
)
def test_host_port_admission(first: JSONDict, second: JSONDict, clash: bool) -> None:
    outcome = host_port_conflict(_with_ports(second), [_with_ports(first)])
    assert outcome == (("NodePorts", REJECT_MESSAGE) if clash else None)
    assert REJECT_MESSAGE == (
        "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
    )


def test_host_network_container_ports_are_host_ports() -> None:
    host = _with_ports({"containerPort": 9000}, host_network=True)
    assert host_port_conflict(_with_ports({"containerPort": 1, "hostPort": 9000}), [host])


def test_cni_faults_in_the_config(tmp_path: Any) -> None:
    spec = LabSpec(
        name="cf",
        nodes=2,
        state_root=tmp_path,
        faults=frozenset({"no-hairpin", "hostport-unmapped"}),
    )
    healthy = LabSpec(name="cf", nodes=2, state_root=tmp_path)
    for plan in spec.node_plans():
        config = NodeCNI(spec, plan, list(plan.pod_cidrs)).network_config()
        kinds = [p["type"] for p in config["plugins"]]
        assert config["plugins"][0]["hairpinMode"] is False
        assert kinds == (["bridge"] if plan.name == "node-2" else ["bridge", "portmap"])
        plain = NodeCNI(healthy, plan, list(plan.pod_cidrs)).network_config()
        assert plain["plugins"][0]["hairpinMode"] is True
        assert plain["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}
        assert "capabilities" not in plain["plugins"][0]
    # sandbox-reset-same-ip: host-local takes the addresses a new sandbox asks for.
    same_ip = LabSpec(name="cf", state_root=tmp_path, faults=frozenset({"sandbox-reset-same-ip"}))
    plan = same_ip.node_plans()[0]
    bridge = NodeCNI(same_ip, plan, list(plan.pod_cidrs)).network_config()["plugins"][0]
    assert bridge["capabilities"] == {"ips": True}
