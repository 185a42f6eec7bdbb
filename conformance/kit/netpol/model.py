"""The model the NetworkPolicy family probes: namespaces x, y, z of the run (each labelled
``ns: <short name>``) and, in each, one pod per tested node, pinned there by ``nodeName``, so
that every node hosts a server and a client of every namespace and every ordered pair of nodes
meets in some cell. Pods are labelled ``pod: a|b|c`` by their node's place (node 1 a, node 2 b,
node 3 c, node 4 a again: its pod is named ``a2``), as in the upstream Netpol e2e, whose
scenarios speak of pods a, b, c.

Every pod serves TCP and UDP on `PORTS` (the probe agent's listeners, one container per port),
its container ports named ``serve-<port>-<proto>`` for the named-port scenarios. A cell is one
ordered pair of distinct pods, one protocol, one port and one IP family. Pure: no cluster here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from conformance.kit.base.jsondata import JSONData

NAMESPACES = ("x", "y", "z")
LETTERS = ("a", "b", "c")
PORTS = (8080, 8081)
PROTOCOLS = ("tcp", "udp")
#: The label naming a model namespace by its short name, and a model pod by its letter.
NS_LABEL = "ns"
POD_LABEL = "pod"


def port_name(port: int, proto: str) -> str:
    """The container port's name: ``serve-8081-tcp``."""
    return f"serve-{port}-{proto}"


def container_name(port: int) -> str:
    """The agent container serving ``port`` (TCP and UDP)."""
    return f"p{port}"


@dataclass(frozen=True)
class ModelPod(JSONData):
    """One pod of the model: ``x/a`` is pod ``a`` of namespace ``x``."""

    namespace: str
    name: str
    letter: str
    node: str
    #: Its addresses, one per IP family, once it is Ready.
    ips: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ip(self, family: int) -> str | None:
        for address in self.ips:
            if (":" in address) == (family == 6):
                return address
        return None


@dataclass(frozen=True)
class Probe(JSONData):
    """What a cell sends: a protocol, a port, an IP family."""

    proto: str
    port: int
    family: int

    @property
    def text(self) -> str:
        return f"{self.proto}/{self.port} IPv{self.family}"


@dataclass(frozen=True)
class Cell(JSONData):
    """One source pod to one destination pod with one probe."""

    source: str
    destination: str
    probe: Probe

    @property
    def text(self) -> str:
        return f"{self.source} -> {self.destination} {self.probe.text}"


def pod_name(index: int) -> str:
    """The pod of the ``index``-th tested node (0-based): a, b, c, a2, b2, c2, ..."""
    letter = LETTERS[index % len(LETTERS)]
    rounds = index // len(LETTERS)
    return letter if rounds == 0 else f"{letter}{rounds + 1}"


@dataclass(frozen=True)
class Model(JSONData):
    """The model's namespaces (short name -> real name) and pods, and the IP families they
    are probed in."""

    namespaces: Mapping[str, str] = field(default_factory=dict)
    pods: tuple[ModelPod, ...] = ()
    families: tuple[int, ...] = (4,)

    def pod(self, key: str) -> ModelPod:
        for pod in self.pods:
            if pod.key == key:
                return pod
        raise KeyError(key)

    def in_namespace(self, short: str) -> tuple[ModelPod, ...]:
        return tuple(p for p in self.pods if p.namespace == short)

    def real(self, short: str) -> str:
        """The real name of model namespace ``short``."""
        return self.namespaces[short]

    def probes(self, ports: Sequence[int], protocols: Sequence[str]) -> tuple[Probe, ...]:
        return tuple(
            Probe(proto, port, family)
            for family in self.families
            for port in ports
            for proto in protocols
        )

    def cells(self, probes: Iterable[Probe]) -> tuple[Cell, ...]:
        """Every ordered pair of distinct pods with every probe."""
        probes = tuple(probes)
        return tuple(
            Cell(source.key, destination.key, probe)
            for source in self.pods
            for destination in self.pods
            if source.key != destination.key
            for probe in probes
        )


def plan_model(
    namespaces: Mapping[str, str], nodes: Sequence[str], families: Sequence[int]
) -> Model:
    """The model before deployment: a pod per node in each namespace (no addresses yet)."""
    pods = tuple(
        ModelPod(namespace=short, name=pod_name(index), letter=LETTERS[index % 3], node=node)
        for short in namespaces
        for index, node in enumerate(nodes)
    )
    return Model(namespaces=dict(namespaces), pods=pods, families=tuple(families))
