"""Containers within a pod share its network namespace: they reach each other over localhost,
see the same interfaces and addresses, and share one port space.

The localhost exchanges come from the run's reachability sweep (`conformance.kit.exchanges.reachability`,
with its retries); the interface and port-space requests from the staged prefetch
(`conformance.kit.exchanges.prefetch`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance.kit.exchanges.prefetch import ItemAnswers, Step, prefetched_by
from conformance.kit.exchanges.reachability import (
    Endpoint,
    Params,
    Planned,
    Target,
    Unplanned,
    swept_by,
)
from conformance.kit.probes.client import address_of_family, require_ok
from conformance.kit.probes.model import ROLE_PROBE, ProbeMap
from conformance.kit.verdicts.failures import fail_rule
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp")
# The families come from the cluster (IPv4-only: 127.0.0.1; IPv6: ::1; dual: both).
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
DIRECTIONS = (("a", "b"), ("b", "a"))
CONTAINERS = ("a", "b")


def targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """Both directions between the probe pod's containers over the family's loopback address
    (none for IPv6 when the pod has no IPv6 address and the run does not require IPv6: where
    it does, ::1 is checked all the same, and the missing address fails the required-family
    check)."""
    proto, family, node = params["proto"], params["family"], params["probe_node"]
    probe = probe_map.get(ROLE_PROBE, node)
    missing = family == 6 and address_of_family(probe.pod_ips, 6) is None
    if missing and family not in probe_map.required_families:
        return Unplanned(f"{probe.describe()} has no IPv6 address")
    return [
        Target(
            check=check,
            proto=proto,
            family=family,
            source=Endpoint(probe.name, src, node),
            destination=Endpoint(probe.name, dst, node),
            host=LOOPBACK[family],
            port=probe.container(dst).port(proto),
            capture=False,
            measure_loss=False,  # loopback: no network to lose packets on
        )
        for src, dst in DIRECTIONS
    ]


@swept_by(targets)
def test_localhost_between_containers(
    proto: str, family: int, probe_node: str, exchanges: ItemExchanges
) -> None:
    """Containers of one pod MUST reach each other over localhost (127.0.0.1, and ::1 when the
    pod has IPv6), in both directions."""
    exchanges.assert_rule(
        "containers of one pod MUST reach each other over localhost",
        expected=f"{proto} to {LOOPBACK[family]} works from a to b and from b to a",
    )


def interface_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """Each container's view of its network namespace: ``info`` (netns) and ``addresses``."""
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    return [
        Step(f"{container}.{op}", probe.name, container, {"op": op})
        for container in CONTAINERS
        for op in ("info", "addresses")
    ]


@prefetched_by(interface_steps)
def test_containers_share_interfaces(
    probe_node: str, probe_map: ProbeMap, answers: ItemAnswers
) -> None:
    """Containers of one pod MUST see the same network namespace: the same interfaces with the
    same addresses."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    views = {}
    for container in CONTAINERS:
        info = require_ok(
            answers[f"{container}.info"], pod=probe.name, container=container, what="info"
        )
        addresses = require_ok(
            answers[f"{container}.addresses"], pod=probe.name, container=container, what="addresses"
        )
        views[container] = {
            "netns": info.get("netns"),
            "interfaces": sorted(
                (i.get("name"), i.get("mac"), tuple(sorted(i.get("addresses", []))))
                for i in addresses.get("interfaces", [])
            ),
        }
    if views["a"] != views["b"]:
        fail_rule(
            "containers of one pod MUST share one network namespace",
            expected="identical network namespace and interface list in a and b",
            observed=f"a sees {views['a']}; b sees {views['b']}",
            pods=[probe.describe()],
            nodes=[probe_node],
        )


def bind_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """Each container tries to bind the port the other container's agent listens on."""
    proto = params["proto"]
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    return [
        Step(
            f"{other}.try_bind",
            probe.name,
            other,
            {
                "op": "try_bind",
                "proto": proto,
                "host": "",
                "port": probe.container(binder).port(proto),
            },
        )
        for binder, other in DIRECTIONS
    ]


@prefetched_by(bind_steps)
def test_port_space_shared(
    proto: str, probe_node: str, probe_map: ProbeMap, answers: ItemAnswers
) -> None:
    """A port bound by one container of a pod MUST be in use (EADDRINUSE) for the others."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    failures = []
    for binder, other in DIRECTIONS:
        port = probe.container(binder).port(proto)
        answer = require_ok(
            answers[f"{other}.try_bind"], pod=probe.name, container=other, what="try_bind"
        )
        if answer.get("bound") or answer.get("errno") != "EADDRINUSE":
            failures.append(
                f"{other} binding {proto} port {port} (held by {binder}): "
                f"bound={answer.get('bound')} errno={answer.get('errno')}"
            )
    if failures:
        fail_rule(
            "containers of one pod MUST share one port space",
            expected="binding the other container's listening port fails with EADDRINUSE",
            observed="; ".join(failures),
            protocol=proto,
            pods=[probe.describe()],
            nodes=[probe_node],
        )
