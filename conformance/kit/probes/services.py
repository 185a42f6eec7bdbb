"""The Services of the Service checks, as the suite thinks of them: their names and ports, the
objects a run creates (before its probe pods, so the pods get their environment variables),
what the cluster made of them (`ServiceFacts`: cluster IPs, NodePorts, the pods' resolvers,
host ports), and the rules the checks hold them to (kubelet's Service environment variables, how
many tries a spread needs). Pure: `conformance.kit.probes.service_deployment` talks to the cluster.

The Services select the ``peer-<node>`` probes (label `BACKEND_LABEL`), one backend per node:

- `SERVICE` (ClusterIP, PreferDualStack): ``tcp`` 80 -> 8080, ``udp`` 81 -> 8081;
- `NODEPORT_SERVICE`: the same, type NodePort (the API server allocates the node ports);
- `HEADLESS_SERVICE`: clusterIP None, for DNS (the ready backends' addresses);
- `EMPTY_SERVICE`: ClusterIP, a selector no pod matches (a Service without endpoints).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubernetes import client

from conformance.kit.base.jsondata import JSONData
from conformance.kit.cluster.resolvers import NodeResolvers

SERVICE = "netconform-probes"
NODEPORT_SERVICE = "netconform-probes-np"
HEADLESS_SERVICE = "netconform-probes-headless"
EMPTY_SERVICE = "netconform-empty"
SERVICES = (SERVICE, NODEPORT_SERVICE, HEADLESS_SERVICE, EMPTY_SERVICE)
#: The label the Services select on: ``true`` on the peer probes, ``none`` selects nothing.
BACKEND_LABEL = "netconform/backend"
BACKEND_VALUE = "true"
NO_BACKEND_VALUE = "none"
#: Service port name -> (port, the backends' agent port, protocol).
PORTS: Mapping[str, tuple[int, int, str]] = {
    "tcp": (80, 8080, "TCP"),
    "udp": (81, 8081, "UDP"),
}
#: Host ports of the hostPort probes: an even H (TCP) and H + 1 (UDP) from this range,
#: chosen at random per run and chosen again for a node where H is taken.
HOST_PORT_RANGE = (20000, 29998)
#: A spread tries until the chance that a reachable backend never answered, under a uniform
#: random choice per connection, is below e^-SPREAD_CONFIDENCE (about one in a million).
SPREAD_CONFIDENCE = math.log(1e6)
#: The agent's bound on one spread's tries.
MAX_SPREAD_TRIES = 4096
#: Every connection of a spread must be answered; a spread makes at least this many, so that a
#: Service failing a share of its new connections (the lab's ``service-resets`` fault: 30 %)
#: fails every spread but for a chance below e^-`SPREAD_CONFIDENCE`: (1 - 0.3)^39 < 1e-6.
FAILING_CONNECTIONS_SHARE = 0.3
SPREAD_MIN_TRIES = math.ceil(SPREAD_CONFIDENCE / -math.log(1 - FAILING_CONNECTIONS_SHARE))


@dataclass(frozen=True)
class ServiceFacts(JSONData):
    """The run's Services as the cluster made them, and what the Service checks need to know
    about the cluster. A ``*_skip`` text says why a check does not apply here."""

    #: Service name -> its ``spec.clusterIPs`` (primary first; empty for the headless one).
    cluster_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Protocol (``tcp``, ``udp``) -> the node port of `NODEPORT_SERVICE`.
    node_ports: Mapping[str, int] = field(default_factory=dict)
    node_port_skip: str | None = None
    #: Node -> the resolvers kubelet wrote there (`conformance.kit.cluster.resolvers`), for DNS.
    resolvers: Mapping[str, NodeResolvers] = field(default_factory=dict)
    #: hostPort probe pod -> its (TCP, UDP) host ports.
    host_ports: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: The pod asking for the first hostPort probe's TCP host port again on its node.
    clash_pod: str = ""
    #: Node -> its InternalIP addresses (NodePort and hostPort traffic goes there).
    internal_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def cluster_ip(self, service: str, family: int) -> str | None:
        """The cluster IP of ``service`` of IP version ``family`` (None when it has none)."""
        return of_family(self.cluster_ips.get(service, ()), family)

    def internal_ip(self, node: str, family: int) -> str | None:
        return of_family(self.internal_ips.get(node, ()), family)


def of_family(addresses: Sequence[str], family: int) -> str | None:
    """The first address of IP version ``family``."""
    for address in addresses:
        try:
            if ipaddress.ip_address(address).version == family:
                return address
        except ValueError:
            continue
    return None


def service_port_of(proto: str) -> int:
    return PORTS[proto][0]


# --- the objects ---------------------------------------------------------------------------------


def service_objects(namespace: str, labels: Mapping[str, str]) -> list[client.V1Service]:
    """The Services a run creates, in creation order (the NodePort one last: a cluster that
    refuses NodePorts still gets the others)."""

    def service(
        name: str, selector: str, *, kind: str = "ClusterIP", headless: bool = False
    ) -> client.V1Service:
        return client.V1Service(
            api_version="v1",
            kind="Service",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
            spec=client.V1ServiceSpec(
                type=kind,
                selector={BACKEND_LABEL: selector},
                ports=[
                    client.V1ServicePort(
                        name=port_name, port=port, target_port=target, protocol=protocol
                    )
                    for port_name, (port, target, protocol) in PORTS.items()
                ],
                cluster_ip="None" if headless else None,
                # A dual-stack cluster gives both families (headless: endpoints of both),
                # a single-stack one its own.
                ip_family_policy="PreferDualStack",
            ),
        )

    return [
        service(SERVICE, BACKEND_VALUE),
        service(HEADLESS_SERVICE, BACKEND_VALUE, headless=True),
        service(EMPTY_SERVICE, NO_BACKEND_VALUE),
        service(NODEPORT_SERVICE, BACKEND_VALUE, kind="NodePort"),
    ]


# --- what the checks hold the cluster to -----------------------------------------------------


def env_name(service: str) -> str:
    """A Service name as kubelet writes it in variable names: upper case, ``-`` as ``_``."""
    return service.upper().replace("-", "_")


def service_environment(service: str, cluster_ip: str) -> dict[str, str]:
    """The variables kubelet sets in a pod for ``service`` (one of ours, `PORTS`), created
    before the pod (``enableServiceLinks``): ``<NAME>_SERVICE_HOST``, ``_SERVICE_PORT`` (the
    first port) and one per named port, and the Docker-link variables (``<NAME>_PORT``,
    ``<NAME>_PORT_<port>_<PROTO>`` with ``_PROTO``, ``_PORT``, ``_ADDR``), all with the
    primary cluster IP (kubelet's ``envvars.FromServices``)."""
    prefix = env_name(service)
    found = {f"{prefix}_SERVICE_HOST": cluster_ip}
    host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    for index, (name, (port, _target, protocol)) in enumerate(PORTS.items()):
        proto = protocol.lower()
        if index == 0:
            found[f"{prefix}_SERVICE_PORT"] = str(port)
            found[f"{prefix}_PORT"] = f"{proto}://{host}:{port}"
        found[f"{prefix}_SERVICE_PORT_{env_name(name)}"] = str(port)
        link = f"{prefix}_PORT_{port}_{protocol}"
        found[link] = f"{proto}://{host}:{port}"
        found[f"{link}_PROTO"] = proto
        found[f"{link}_PORT"] = str(port)
        found[f"{link}_ADDR"] = cluster_ip
    return found


def service_names(namespace: str, domain: str, service: str = SERVICE) -> tuple[str, str, str]:
    """The names a pod resolves a Service by: short, namespace-qualified, fully qualified."""
    return service, f"{service}.{namespace}", f"{service}.{namespace}.svc.{domain}"


def spread_tries(backends: int, expected: int) -> int:
    """Tries a spread over ``backends`` endpoints needs so that each of ``expected`` of them
    answers at least once, but for a chance below e^-`SPREAD_CONFIDENCE`, when every
    connection picks an endpoint uniformly at random (kube-proxy's iptables mode; IPVS round
    robin and Maglev do no worse): by the union bound, expected * (1 - 1/backends)^t <=
    expected * e^(-t/backends), so t = backends * (ln(expected) + SPREAD_CONFIDENCE)."""
    if backends <= 0 or expected <= 0:
        return 1
    tries = math.ceil(backends * (math.log(expected) + SPREAD_CONFIDENCE))
    return max(1, min(MAX_SPREAD_TRIES, tries))


def node_port_tries(backends: int, local: int) -> int:
    """Connections through a NodePort so that, with ``local`` of the Service's ``backends``
    endpoints on the node asked and a uniform random choice per connection, an endpoint on
    another node answers but for a chance below e^-`SPREAD_CONFIDENCE` ((local/backends)^t),
    and at least `SPREAD_MIN_TRIES` (every connection is judged)."""
    if local <= 0 or local >= backends:
        return SPREAD_MIN_TRIES
    tries = math.ceil(SPREAD_CONFIDENCE / math.log(backends / local))
    return max(SPREAD_MIN_TRIES, min(MAX_SPREAD_TRIES, tries))
