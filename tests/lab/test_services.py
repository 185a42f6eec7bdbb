"""The lab's Service data plane end to end (root; `netlab up`, real runc pods): ClusterIP over
TCP and UDP spread over every ready backend with the client's own address, the node's own
connections, hairpin, prompt refusal without endpoints, NodePort on every node from pods and
other nodes, endpoints following readiness, DNS names and headless answers through the pod's
resolver, Service environment variables, hostPort through portmap and kubelet's hostPort
admission, on IPv4, IPv6 and dual-stack labs; and each fault of issue 16 breaking exactly its
behaviour (``services_kit.observe``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from services_kit import observe, observe_readiness, rule_update_latency, service_lab

from netlab.dataplane.cleanup import sweep

pytestmark = pytest.mark.needs_lab

# The behaviour each fault must break (every other one holds).
FAULT_BREAKS = {
    "no-hairpin": {"hairpin"},
    "stale-endpoints": {"readiness"},
    "nodeport-missing-on-node": {"nodeport node-2"},
    "service-masquerade": {"no snat"},
    "dns-wrong-address": {"dns"},
    "hostport-unmapped": {"hostport node-2"},
}


def broken(seen: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in seen.items() if v != "ok" and k != "probe seconds"}


@pytest.mark.parametrize("ip_family", ["ipv4", "ipv6", "dual"])
def test_healthy_lab_serves_every_service_behaviour(
    ip_family: str, lab_names: Callable[[], str]
) -> None:
    name = lab_names()
    try:
        with service_lab(name, ip_family) as lab:
            for version in lab.families:
                seen = observe(lab, version)
                seen["readiness"] = observe_readiness(lab, version)
                print(f"IPv{version}: {len(seen) - 1} behaviours, probes {seen['probe seconds']} s")
                assert not broken(seen), f"{ip_family} IPv{version}: {broken(seen)}"
            if lab.families == (4,):
                latency = rule_update_latency(lab)
                print(
                    f"rule updates on {len(lab.nodes)} nodes: a new Service in every node's "
                    f"rules after {latency['create']:.3f} s, gone {latency['delete']:.3f} s "
                    "after its deletion"
                )
    finally:
        sweep(name)


@pytest.mark.parametrize(
    ("fault", "ip_family"),
    [
        *((fault, "ipv4") for fault in FAULT_BREAKS),
        ("service-masquerade", "dual"),
        ("nodeport-missing-on-node", "ipv6"),
    ],
)
def test_each_service_fault_breaks_only_its_behaviour(
    fault: str, ip_family: str, lab_names: Callable[[], str]
) -> None:
    name = lab_names()
    try:
        with service_lab(name, ip_family, faults=(fault,)) as lab:
            for version in lab.families:
                seen = observe(lab, version)
                seen["readiness"] = observe_readiness(lab, version)
                assert set(broken(seen)) == FAULT_BREAKS[fault], (
                    f"{fault} on {ip_family}, IPv{version}: broken {broken(seen)}"
                )
                print(f"{fault} IPv{version}: broke {sorted(broken(seen))} only")
    finally:
        sweep(name)
