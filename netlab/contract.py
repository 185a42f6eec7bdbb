"""The seam between netlab's control plane (API server) and its kubelets (one per node).

The API server owns objects; a kubelet runs the pods bound to its node. The API server calls a
kubelet imperatively (start, stop, exec, logs); the kubelet reports back through the callbacks
it was given. Objects cross this seam as JSON-shaped dicts exactly
as the Kubernetes API serialises them (camelCase keys), so neither side re-maps fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JSONDict = dict[str, Any]

# Called by a kubelet whenever a pod's status changes: (pod uid, full v1 PodStatus dict).
StatusCallback = Callable[[str, JSONDict], None]
# Called by a kubelet to record an Event: (pod uid, type "Normal"|"Warning", reason, message).
EventCallback = Callable[[str, str, str, str], None]
# Looks up an object the kubelet needs to run a pod (configMap volumes): (namespace, name) -> data.
ConfigMapLookup = Callable[[str, str], Mapping[str, str] | None]
# Looks up the Services of a namespace (v1 Service dicts), for the pods' service environment.
ServiceLookup = Callable[[str], Sequence[JSONDict]]


class RuntimeError_(Exception):
    """Base of the errors a kubelet raises to the API server."""


class PodNotFound(RuntimeError_):
    """The kubelet runs no pod with that uid."""


class ContainerNotRunning(RuntimeError_):
    """The container exists in the pod spec but is not running (exec impossible)."""


class ContainerNotFound(RuntimeError_):
    """The pod has no container of that name."""


@dataclass(frozen=True)
class NodeInfo:
    """What the API server publishes as a v1 Node."""

    name: str
    internal_ip: str  # primary family's address
    pod_cidrs: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[JSONDict, ...] = ()  # v1 Taint dicts
    kernel_version: str = ""
    os_image: str = ""
    container_runtime_version: str = ""  # e.g. "runc://1.1.5"
    kubelet_version: str = "v1.31.0-netlab"
    internal_ips: tuple[str, ...] = ()  # every family's address, primary first; () = internal_ip
    #: What the container runtime says is wrong with the node's network, as kubelet keeps it
    #: (runtimeState.networkErrors): the node is then not Ready and runs no pod-network pod.
    network_errors: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The node's InternalIP addresses as the API lists them, primary first."""
        return self.internal_ips or (self.internal_ip,)


class ExecProcess(Protocol):
    """A process started in a container; ``asyncio.subprocess.Process`` satisfies it."""

    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None
    returncode: int | None

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class KubeletAPI(Protocol):
    """What the API server needs of a kubelet (one per node)."""

    node: NodeInfo

    async def start_pod(self, pod: JSONDict) -> None:
        """Run the pod (spec.nodeName is this node). Returns once the sandbox is being made;
        progress (Pending -> Running/Succeeded/Failed, IPs, container states) arrives through
        the status callback the kubelet was built with."""

    async def stop_pod(self, uid: str, grace_period_seconds: int) -> None:
        """Graceful delete: SIGTERM, wait up to the grace period, SIGKILL, then CNI DEL and the
        sandbox removed and its IP released. Returns when all of that is done."""

    async def exec(
        self, uid: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> ExecProcess:
        """Start ``command`` in a running container (raises PodNotFound, ContainerNotFound,
        ContainerNotRunning)."""

    def logs(
        self,
        uid: str,
        container: str,
        *,
        follow: bool,
        tail_lines: int | None,
        previous: bool,
    ) -> AsyncIterator[bytes]:
        """A container's output (stdout and stderr interleaved, as kubelet logs are)."""
