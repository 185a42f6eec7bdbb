"""The exchanges of the Service checks (`conformance.kit.exchanges.reachability.Target`s through a
Service's cluster IP, a NodePort or a hostPort), planned from a test item's parameters and the
run's `ServiceFacts`, for the checks' ``@swept_by`` planners and the readiness flip."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from conformance.kit.base.errors import ProbeDeploymentError
from conformance.kit.exchanges.reachability import (
    KIND_EXCHANGE,
    KIND_REFUSAL,
    KIND_SPREAD,
    Endpoint,
    Target,
    Unplanned,
    without_address,
)
from conformance.kit.probes.client import address_of_family
from conformance.kit.probes.model import (
    ROLE_HOSTPORT,
    ROLE_HOSTPROBE,
    ROLE_PEER,
    ROLE_PROBE,
    ProbeMap,
)
from conformance.kit.probes.services import (
    EMPTY_SERVICE,
    NODEPORT_SERVICE,
    SERVICE,
    SPREAD_MIN_TRIES,
    ServiceFacts,
    node_port_tries,
    service_port_of,
    spread_tries,
)

#: Source kinds of the NodePort and hostPort checks: a node's probe pod, or its host network.
FROM_POD = "pod"
FROM_HOST = "host"


def facts_of(probe_map: ProbeMap) -> ServiceFacts:
    """The run's Service facts; `ProbeDeploymentError` (could not test) when it made none."""
    if probe_map.services is None:
        raise ProbeDeploymentError(f"the run in {probe_map.namespace} made no Services")
    return probe_map.services


def without_services(probe_map: ProbeMap) -> Unplanned | None:
    """Why an item has no Service traffic when the run made no Services (a probe map of
    another origin); None when it made them."""
    if probe_map.services is None:
        return Unplanned(f"the run in {probe_map.namespace} made no Services")
    return None


def backends(probe_map: ProbeMap, family: int, node: str | None = None) -> tuple[str, ...]:
    """The Service's endpoints of IP version ``family``: every peer probe with such an address
    (only those on ``node`` when given)."""
    return tuple(
        p.name
        for p in probe_map.of_role(ROLE_PEER)
        if address_of_family(p.pod_ips, family) and node in (None, p.node)
    )


def no_cluster_ip(service: str, family: int) -> Unplanned:
    return Unplanned(
        f"Service {service} has no IPv{family} cluster IP (the cluster serves no IPv{family} "
        "service range)"
    )


def _source(
    probe_map: ProbeMap, role: str, node: str, family: int
) -> tuple[Endpoint, str] | Unplanned:
    probe = probe_map.get(role, node)
    ip = address_of_family(probe.pod_ips, family)
    if ip is None:
        return without_address(family, [probe], probe_map)
    return Endpoint(probe.name, probe.container().name, node), ip


def _through_cluster_ip(
    check: str,
    params: Mapping[str, Any],
    probe_map: ProbeMap,
    service: str,
    role: str,
    proto: str,
) -> tuple[Target, str] | Unplanned:
    """A spread from the ``role`` probe of ``probe_node`` to ``service``'s cluster IP of
    ``family`` (judged from the client's side: no capture), and the source's own IP; why there
    is none when the run made no Services, the Service has no such cluster IP or the probe no
    such address."""
    if (missing := without_services(probe_map)) is not None:
        return missing
    family, node = params["family"], params["probe_node"]
    vip = facts_of(probe_map).cluster_ip(service, family)
    if vip is None:
        return no_cluster_ip(service, family)
    source = _source(probe_map, role, node, family)
    if isinstance(source, Unplanned):
        return source
    endpoint, own_ip = source
    target = Target(
        check=check,
        proto=proto,
        family=family,
        source=endpoint,
        destination=Endpoint(service, "", ""),
        host=vip,
        port=service_port_of(proto),
        capture=False,
        kind=KIND_SPREAD,
    )
    return target, own_ip


def _spread(
    target: Target, servers: tuple[str, ...], *, endpoints: tuple[str, ...], **fields: Any
) -> Target:
    """``target`` as a spread: connections until each of ``servers`` answered, every one answered
    by one of ``endpoints``; as many tries as `spread_tries` gives, at least `SPREAD_MIN_TRIES`."""
    return replace(
        target,
        servers=servers,
        endpoints=endpoints,
        max_tries=max(SPREAD_MIN_TRIES, spread_tries(len(endpoints), len(servers))),
        min_tries=SPREAD_MIN_TRIES,
        **fields,
    )


def cluster_ip_spread(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap
) -> Sequence[Target] | Unplanned:
    """From the probe pod of ``probe_node`` to the Service's cluster IP of ``family``: connect
    until every endpoint answered (a bounded number of tries, at least `SPREAD_MIN_TRIES`),
    every connection answered by an endpoint; each endpoint must see the client pod's own
    IP."""
    planned = _through_cluster_ip(check, params, probe_map, SERVICE, ROLE_PROBE, params["proto"])
    if isinstance(planned, Unplanned):
        return planned
    target, own_ip = planned
    servers = backends(probe_map, target.family)
    return [_spread(target, servers, endpoints=servers, allowed_sources=(own_ip,))]


def hairpin_spread(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap
) -> Sequence[Target] | Unplanned:
    """From the peer probe of ``probe_node`` (an endpoint of the Service) to the Service's
    cluster IP: connect until the pod itself answered (at least `SPREAD_MIN_TRIES` times),
    every connection answered by an endpoint (kube-proxy may masquerade hairpin traffic, so
    the source is not judged)."""
    planned = _through_cluster_ip(check, params, probe_map, SERVICE, ROLE_PEER, params["proto"])
    if isinstance(planned, Unplanned):
        return planned
    target, _ = planned
    endpoints = backends(probe_map, target.family)
    return [_spread(target, (target.source.pod,), endpoints=endpoints)]


def refusal(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap
) -> Sequence[Target] | Unplanned:
    """From the probe pod of ``probe_node`` to the cluster IP of the Service without endpoints:
    one TCP connection, which must be refused."""
    planned = _through_cluster_ip(check, params, probe_map, EMPTY_SERVICE, ROLE_PROBE, "tcp")
    if isinstance(planned, Unplanned):
        return planned
    return [replace(planned[0], kind=KIND_REFUSAL)]


def _pair_ends(
    params: Mapping[str, Any], probe_map: ProbeMap, source_kind: str, what: str
) -> tuple[Endpoint, str] | Unplanned:
    """The source of the item's node pair (its source node's probe pod, or host network) and
    the destination node's InternalIP of ``family``; why there is none (``what`` the
    destination serves, for the reason)."""
    pair, family = params["node_pair"], params["family"]
    address = facts_of(probe_map).internal_ip(pair.dst, family)
    if address is None:
        reason = f"node {pair.dst} has no IPv{family} InternalIP for {what}"
        if family in probe_map.required_families:
            return Unplanned(f"{reason}, although IPv{family} is required", broken=True)
        return Unplanned(reason)
    if source_kind == FROM_HOST:
        host = probe_map.get(ROLE_HOSTPROBE, pair.src)
        return Endpoint(host.name, host.container().name, pair.src), address
    source = _source(probe_map, ROLE_PROBE, pair.src, family)
    return source if isinstance(source, Unplanned) else (source[0], address)


def node_port(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, source_kind: str
) -> Sequence[Target] | Unplanned:
    """From the probe pod (or the host network) of the pair's source node to the NodePort
    Service at the destination node's InternalIP: a spread of `node_port_tries` connections,
    every one answered by an endpoint of the Service, and at least one by an endpoint on
    another node. That is what externalTrafficPolicy Cluster (the default) promises: a node
    forwards NodePort traffic to the Service's ready endpoints on every node, not only its
    own; a node answering only from local endpoints fails every item (that every endpoint
    is in each node's Service rules is the cluster IP check's, from every node)."""
    if (missing := without_services(probe_map)) is not None:
        return missing
    facts = facts_of(probe_map)
    if facts.node_port_skip is not None:
        return Unplanned(facts.node_port_skip)
    ends = _pair_ends(params, probe_map, source_kind, "NodePorts")
    if isinstance(ends, Unplanned):
        return ends
    source, address = ends
    proto, family, dst = params["proto"], params["family"], params["node_pair"].dst
    endpoints = backends(probe_map, family)
    local = backends(probe_map, family, dst)
    tries = node_port_tries(len(endpoints), len(local))
    return [
        Target(
            check=check,
            proto=proto,
            family=family,
            source=source,
            destination=Endpoint(NODEPORT_SERVICE, "", dst),
            host=address,
            port=facts.node_ports[proto],
            capture=False,
            kind=KIND_SPREAD,
            servers=(),
            endpoints=endpoints,
            one_of_servers=tuple(e for e in endpoints if e not in local),
            max_tries=tries,
            min_tries=tries,
        )
    ]


def host_port(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, source_kind: str
) -> Sequence[Target] | Unplanned:
    """From the probe pod (or the host network) of the pair's source node to the destination
    node's InternalIP at its hostPort probe's host port: that probe answers."""
    if (missing := without_services(probe_map)) is not None:
        return missing
    ends = _pair_ends(params, probe_map, source_kind, "hostPorts")
    if isinstance(ends, Unplanned):
        return ends
    source, address = ends
    proto, dst = params["proto"], params["node_pair"].dst
    target = probe_map.get(ROLE_HOSTPORT, dst)
    tcp, udp = facts_of(probe_map).host_ports[target.name]
    return [
        Target(
            check=check,
            proto=proto,
            family=params["family"],
            source=source,
            destination=Endpoint(target.name, target.container().name, dst),
            host=address,
            port=tcp if proto == "tcp" else udp,
            capture=False,
            kind=KIND_EXCHANGE,
            servers=(target.name,),
        )
    ]
