"""The probe pods of a run, as the suite thinks of them: which pods on which nodes, their
containers and listener ports, and (once deployed) their IPs. Pure data, shared between the
run's processes as JSON; `conformance.kit.probes.podspecs` turns them into pod objects and
`conformance.kit.probes.deploy` makes them exist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from conformance.kit.base.jsondata import JSONData
from conformance.kit.probes.services import ServiceFacts

# Every role has one pod on every tested node.
ROLE_PROBE = "probe"  # pod network, containers a and b with shared volumes
ROLE_PEER = "peer"  # pod network, the second pod of the node (same-node pairs)
ROLE_HOSTPROBE = "hostprobe"  # hostNetwork: the node's own network stack
ROLE_SANDBOX = "sandbox"  # pod network; the sandbox check kills one of its containers
ROLES = (ROLE_PROBE, ROLE_PEER, ROLE_HOSTPROBE, ROLE_SANDBOX)
#: Pod network, one container whose ports are mapped to host ports (the hostPort checks); made
#: apart from the roles above, since the host ports are chosen and retried at deployment.
ROLE_HOSTPORT = "hostport"

# Two agents share a pod's network namespace, so each container gets its own ports.
POD_PORTS = {"a": (8080, 8081), "b": (8082, 8083), "agent": (8080, 8081)}
#: A node's ports are shared with everything else on it (other runs' probes included): the
#: hostNetwork agent binds free ports (0) and the deployment asks it which it got.
EPHEMERAL_PORTS = (0, 0)


@dataclass(frozen=True)
class ProbeContainer(JSONData):
    """One container running the probe agent, and the agent's listener ports."""

    name: str
    tcp_port: int
    udp_port: int

    def port(self, proto: str) -> int:
        """The listener port for ``proto``: UDP's own, TCP's for tcp (and icmp, which has none)."""
        return self.udp_port if proto == "udp" else self.tcp_port


@dataclass(frozen=True)
class Probe(JSONData):
    """A probe pod. IPs are filled in once it is Ready."""

    name: str
    role: str
    node: str
    containers: tuple[ProbeContainer, ...]
    pod_ips: tuple[str, ...] = ()
    host_ip: str = ""
    #: The Service backend whose readiness the Service checks turn off and on again (the
    #: first node's peer): probed for readiness often, so the flip shows quickly.
    readiness_target: bool = False

    def container(self, name: str | None = None) -> ProbeContainer:
        """The container ``name`` (the first one by default)."""
        if name is None:
            return self.containers[0]
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(f"pod {self.name} has no probe container {name!r}")

    def describe(self) -> str:
        return f"{self.name} on {self.node} ({', '.join(self.pod_ips) or 'no IP'})"


@dataclass(frozen=True)
class ProbeMap(JSONData):
    """Every probe of a run and the addresses of the nodes they run on."""

    namespace: str
    probes: tuple[Probe, ...] = ()
    #: node name -> the IP addresses its Node object lists (InternalIP first).
    node_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: IP families every probe must have an address of (those the cluster declares, or what
    #: ``--ip-family`` names; `conformance.kit.cluster.families`): a probe without one breaks a rule
    #: instead of skipping.
    required_families: tuple[int, ...] = ()
    #: The run's Services as the cluster made them (the Service checks); None before they exist.
    services: ServiceFacts | None = None

    def of_role(self, role: str) -> tuple[Probe, ...]:
        return tuple(p for p in self.probes if p.role == role)

    @cached_property
    def _by_place(self) -> dict[tuple[str, str], Probe]:
        # Planners look probes up once per exchange: thousands of times on large clusters.
        return {(p.role, p.node): p for p in reversed(self.probes)}

    def get(self, role: str, node: str) -> Probe:
        found = self._by_place.get((role, node))
        if found is None:
            raise KeyError(f"no {role} probe on node {node} in namespace {self.namespace}")
        return found

    def find(self, role: str, node: str) -> Probe | None:
        try:
            return self.get(role, node)
        except KeyError:
            return None


def pod_name(role: str, node: str) -> str:
    """``<role>-<node>``, cut to a DNS label so the pod's hostname stays valid."""
    name = f"{role}-{node}".lower().replace("_", "-")
    return name[:63].rstrip("-.")


def planned_probes(nodes: Sequence[str]) -> tuple[Probe, ...]:
    """The probes for the selected nodes, four per node: probe, peer, hostprobe, sandbox (the
    hostprobe's ports are known once it runs)."""
    pair = (ProbeContainer("a", *POD_PORTS["a"]), ProbeContainer("b", *POD_PORTS["b"]))
    single = (ProbeContainer("agent", *POD_PORTS["agent"]),)
    containers = {
        ROLE_PROBE: pair,
        ROLE_PEER: single,
        ROLE_HOSTPROBE: (ProbeContainer("agent", *EPHEMERAL_PORTS),),
        ROLE_SANDBOX: pair,
    }
    return tuple(
        Probe(
            pod_name(role, node),
            role,
            node,
            containers[role],
            readiness_target=role == ROLE_PEER and node == nodes[0],
        )
        for node in nodes
        for role in ROLES
    )


def hostport_probe(node: str, attempt: int = 0) -> Probe:
    """The hostPort probe of ``node`` (``hostport-<node>``; a later attempt, after a port
    conflict, ``hostport-<node>-<attempt>``: the refused pod stays, with kubelet's reason)."""
    name = pod_name(ROLE_HOSTPORT, node)
    if attempt:
        suffix = f"-{attempt}"
        name = name[: 63 - len(suffix)].rstrip("-.") + suffix
    return Probe(name, ROLE_HOSTPORT, node, (ProbeContainer("agent", *POD_PORTS["agent"]),))


def deployed_pod_count(nodes: Sequence[str]) -> int:
    """How many pods a run deploys on ``nodes`` when nothing is refused: the probes, a hostPort
    probe per node, and the one pod that asks for a hostPort already taken."""
    return len(planned_probes(nodes)) + len(nodes) + (1 if nodes else 0)
