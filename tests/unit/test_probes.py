"""`conformance.kit.probes.model`: the probe model. Which probes a run plans on its nodes, their
containers and ports, and the `ProbeMap` shared between processes as JSON."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.probes import model as probes


def sample_map() -> probes.ProbeMap:
    planned = probes.planned_probes(["n1", "n2"])
    return probes.ProbeMap(
        "ns",
        tuple(
            dataclasses.replace(p, pod_ips=("10.0.0.1", "fd00::1"), host_ip="192.0.2.1")
            for p in planned
        ),
        node_addresses={"n1": ("192.0.2.1", "fd00:2::1"), "n2": ("192.0.2.2",)},
        required_families=(4, 6),
    )


def test_every_role_has_a_pod_on_every_node() -> None:
    planned = probes.planned_probes(["n1", "n2", "n3"])
    assert len(planned) == len(probes.ROLES) * 3
    assert {(p.role, p.node) for p in planned} == {
        (role, node) for role in probes.ROLES for node in ("n1", "n2", "n3")
    }
    assert len({p.name for p in planned}) == len(planned)
    assert probes.planned_probes([]) == ()


def test_containers_of_one_pod_never_share_a_port() -> None:
    for probe in probes.planned_probes(["n1"]):
        ports = [p for c in probe.containers for p in (c.tcp_port, c.udp_port)]
        if probe.role == probes.ROLE_HOSTPROBE:
            # A node's ports are shared with everything on it: the agent binds free ones.
            assert ports == list(probes.EPHEMERAL_PORTS)
            continue
        assert len(set(ports)) == len(ports), probe


def test_probe_map_round_trip() -> None:
    original = sample_map()
    again = probes.ProbeMap.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original
    assert again.node_addresses["n1"] == ("192.0.2.1", "fd00:2::1")  # tuples come back


def test_probe_map_lookups() -> None:
    original = sample_map()
    assert original.get(probes.ROLE_PROBE, "n2").container("b").tcp_port == 8082
    assert original.find(probes.ROLE_PEER, "n2") == original.get(probes.ROLE_PEER, "n2")
    assert original.find(probes.ROLE_PEER, "n9") is None
    with pytest.raises(KeyError, match="no sandbox probe on node n9 in namespace ns"):
        original.get(probes.ROLE_SANDBOX, "n9")
    assert [p.node for p in original.of_role(probes.ROLE_HOSTPROBE)] == ["n1", "n2"]


def test_container_by_name_and_its_ports() -> None:
    probe = sample_map().get(probes.ROLE_PROBE, "n1")
    assert probe.container().name == "a"  # the first by default
    b = probe.container("b")
    assert (b.name, b.port("tcp"), b.port("udp"), b.port("icmp")) == ("b", 8082, 8083, 8082)
    with pytest.raises(KeyError, match="no probe container 'c'"):
        probe.container("c")
    assert probe.describe() == f"{probe.name} on n1 (10.0.0.1, fd00::1)"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=300))
def test_pod_names_are_dns_labels(node: str) -> None:
    for role in probes.ROLES:
        name = probes.pod_name(role, node)
        assert len(name) <= 63
        assert name.startswith(role)
        assert not re.search(r"[-.]$", name)
