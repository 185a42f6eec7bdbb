"""LabSpec: validation of user input and the derived address plan."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netlab.faults import FAULTS, describe_faults
from netlab.spec import LabSpec, LabSpecError


def test_default_plan_looks_like_kind() -> None:
    plans = LabSpec().node_plans()
    assert [p.name for p in plans] == ["node-1", "node-2", "node-3"]
    assert [p.internal_ip for p in plans] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert [p.pod_cidrs for p in plans] == [
        ("10.244.0.0/24",),
        ("10.244.1.0/24",),
        ("10.244.2.0/24",),
    ]
    assert [p.netns for p in plans] == [f"netlab-default-node-{i}" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "at least 1 node"),
        ({"name": "Bad_Name"}, "lab name"),
        ({"name": "x" * 13}, "lab name"),
        ({"faults": frozenset({"no-such-fault"})}, "unknown fault no-such-fault"),
        ({"cluster_cidr": "10.244.0.0/33"}, "bad CIDR"),
        ({"nodes": 300, "cluster_cidr": "10.244.0.0/24", "node_cidr_prefix": 28}, "room for fewer"),
        ({"node_cidr_prefix": 16}, "does not fit"),
    ],
)
def test_bad_specs_are_refused_with_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabSpecError, match=message) as caught:
        LabSpec(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


# No deadline: these machines are shared, and plan size, not speed, is under test.
@settings(deadline=None)
@given(nodes=st.integers(min_value=1, max_value=250))
def test_node_cidrs_and_addresses_never_collide(nodes: int) -> None:
    plans = LabSpec(nodes=nodes).node_plans()
    cidrs = [ipaddress.ip_network(c) for p in plans for c in p.pod_cidrs]
    assert len(plans) == nodes
    assert all(not a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1 :])
    assert len({p.internal_ip for p in plans}) == nodes
    assert len({p.netns for p in plans}) == nodes


def test_every_fault_has_a_one_line_description() -> None:
    lines = describe_faults().splitlines()
    assert len(lines) == len(FAULTS)
    assert all(line.split()[0] in FAULTS for line in lines)


def test_network_policy_faults_need_the_engine() -> None:
    assert LabSpec(faults=frozenset({"netpol-egress-ignored"})).network_policy
    with pytest.raises(LabSpecError, match="needs the NetworkPolicy engine"):
        LabSpec(faults=frozenset({"netpol-egress-ignored"}), network_policy=False)
    assert not LabSpec(network_policy=False, faults=frozenset({"udp-drop"})).network_policy


def test_ip_family_plans_carry_one_address_and_pod_cidr_per_family_primary_first() -> None:
    dual = LabSpec(ip_family="dual")
    assert dual.families == (4, 6)
    first = dual.node_plans()[0]
    assert first.internal_ips == ("172.18.0.2", "fd00:172:18::2")
    assert first.internal_ip == "172.18.0.2"
    assert first.pod_cidrs == ("10.244.0.0/24", "fd00:10:244::/64")
    assert dual.fabric_gateways == ("172.18.0.1", "fd00:172:18::1")
    assert dual.service_cidrs == ("10.96.0.0/12", "fd00:10:96::/112")
    assert dual.cluster_cidrs == ("10.244.0.0/16", "fd00:10:244::/56")
    ipv6 = LabSpec(ip_family="ipv6")
    third = ipv6.node_plans()[2]
    assert (third.internal_ip, third.internal_ips) == ("fd00:172:18::4", ("fd00:172:18::4",))
    assert third.pod_cidrs == ("fd00:10:244:2::/64",)
    assert ipv6.fabric_gateway == "fd00:172:18::1"
    assert LabSpec().node_plans()[0].internal_ips == ("172.18.0.2",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip_family": "ipv5"}, "IP family 'ipv5' is not one of ipv4, ipv6, dual"),
        ({"ip_family": "dual", "cluster_cidr_v6": "10.0.0.0/8"}, "must all be IPv6"),
        ({"ip_family": "ipv6", "node_cidr_prefix_v6": 56}, "does not fit"),
    ],
)
def test_bad_ip_family_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabSpecError, match=re.escape(message)):
        LabSpec(**kwargs)  # type: ignore[arg-type]
