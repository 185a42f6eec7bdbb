"""A pod sandbox, as containerd builds one: a pinned network namespace attached by CNI, and a
pause container that owns the pod's UTS (hostname) and IPC namespaces for the pod's life.

Pod network namespaces are named ``netlab-<lab>-pod-<uid[:8]>`` (and, for the split-netns
fault, ``...-pod-<uid[:8]>-<container>``) so a sweep finds them by name. hostNetwork pods get
no namespace of their own: they join the node's, and their IP is the node's internal IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from netlab.dataplane.cni import CNIAttachment, NodeCNI, port_mappings_from_pod
from netlab.dataplane.nsexec import netns_exists, netns_path
from netlab.dataplane.runtime import ContainerConfig, ContainerRuntime
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

PAUSE_COMMAND = ("sleep", "infinity")
HOSTNAME_MAX = 63  # kubelet truncates the pod name to a valid hostname


class SandboxError(RuntimeError):
    """The sandbox could not be made (everything made so far was removed)."""


class PodSandbox:
    """One pod's network namespace, CNI attachment and pause container.

    ``create()`` builds all three (all or nothing); ``remove()`` stops the pause container,
    runs CNI DEL (releasing the IP) and removes the namespace, and is safe to call at any point.
    """

    def __init__(
        self,
        spec: LabSpec,
        plan: NodePlan,
        runtime: ContainerRuntime,
        cni: NodeCNI,
        pod: Mapping[str, Any],
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.runtime = runtime
        self.cni = cni
        self.pod = pod
        metadata = pod.get("metadata", {})
        self.uid = str(metadata["uid"])
        self.short_uid = self.uid.replace("-", "")[:8]
        self.pod_name = str(metadata.get("name", self.short_uid))
        self.host_network = bool(pod.get("spec", {}).get("hostNetwork", False))
        self.netns_name = f"{spec.netns_prefix}pod-{self.short_uid}"
        # kind nodes are containers named after the node: a hostNetwork pod sees that name.
        hostname = plan.name if self.host_network else self.pod_name
        self.hostname = hostname[:HOSTNAME_MAX].rstrip("-.")
        self.generation = 0
        self.attachment: CNIAttachment | None = None
        self.pause_pid: int | None = None
        self._extra: dict[str, tuple[str, CNIAttachment]] = {}  # split-netns: name -> (ns, att)

    # --- names and paths -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox id (CNI_CONTAINERID, runc id of the pause container)."""
        return f"{self.short_uid}-s{self.generation}"

    @property
    def pause_id(self) -> str:
        return f"{self.id}-pause"

    @property
    def net_path(self) -> str:
        netns = self.plan.netns if self.host_network else self.netns_name
        return str(netns_path(netns))

    @property
    def uts_path(self) -> str:
        return f"/proc/{self._pid()}/ns/uts"

    @property
    def ipc_path(self) -> str:
        return f"/proc/{self._pid()}/ns/ipc"

    def _pid(self) -> int:
        if self.pause_pid is None:
            raise SandboxError(f"sandbox {self.id} has no pause container")
        return self.pause_pid

    @property
    def ips(self) -> tuple[str, ...]:
        """The pod's IPs (IPv4 first), as the sandbox status reports them; a hostNetwork pod
        has the node's addresses (one per family)."""
        if self.host_network:
            return self.plan.internal_ips or (self.plan.internal_ip,)
        return self.attachment.ips if self.attachment else ()

    @property
    def ip_cidrs(self) -> tuple[str, ...]:
        return self.attachment.ip_cidrs if self.attachment else ()

    # --- life ----------------------------------------------------------------------------------

    async def create(self, *, ips: Sequence[str] = ()) -> None:
        """Make the namespace, attach it (asking for ``ips`` when given) and start pause."""
        pause = ContainerConfig(
            args=PAUSE_COMMAND,
            env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
            hostname=self.hostname,
            capabilities=(),
            namespaces={
                "pid": None,
                "mount": None,
                "uts": None,
                "ipc": None,
                "network": self.net_path,
            },
        )
        try:
            if self.host_network:
                self.pause_pid = await self.runtime.run_detached(self.pause_id, pause)
            else:
                await self._make_netns(self.netns_name)
                # The pause container needs only the pinned namespace, not its addresses:
                # start it while CNI attaches the namespace.
                outcomes = await asyncio.gather(
                    self.runtime.run_detached(self.pause_id, pause),
                    self.cni.add(
                        self.id,
                        self.net_path,
                        port_mappings=port_mappings_from_pod(self.pod),
                        ips=ips,
                    ),
                    return_exceptions=True,
                )
                failures = [o for o in outcomes if isinstance(o, BaseException)]
                if failures:
                    raise failures[0]
                pause_pid, attachment = outcomes
                assert isinstance(pause_pid, int)
                assert isinstance(attachment, CNIAttachment)
                self.pause_pid, self.attachment = pause_pid, attachment
        except BaseException as error:
            await asyncio.shield(self.remove())
            if isinstance(error, Exception):
                raise SandboxError(f"sandbox for pod {self.pod_name}: {error}") from error
            raise
        log.debug("sandbox %s: ips %s, pause pid %s", self.id, self.ips, self.pause_pid)

    @staticmethod
    async def _make_netns(name: str) -> None:
        if netns_exists(name):
            # A leftover of the same uid (a crashed kubelet): take it over cleanly.
            await asyncio.to_thread(pyroute2_netns.remove, name)
        await asyncio.to_thread(pyroute2_netns.create, name)

    async def remove(self) -> None:
        """Stop pause, CNI DEL, remove the namespace(s). Idempotent; errors are logged, and
        every step runs even if an earlier one failed."""
        problems: list[str] = []

        async def stop_pause() -> None:
            await self.runtime.delete(self.pause_id, self.pause_pid)
            self.pause_pid = None

        async def detach() -> None:
            for name in list(self._extra):
                await self.remove_container_netns(name)
            if not self.host_network:
                # DEL needs the namespace: it stays pinned until after DEL, pause or not.
                await self.cni.delete(self.id, self.net_path)
                self.attachment = None

        outcomes = await asyncio.gather(stop_pause(), detach(), return_exceptions=True)
        problems += [str(o) for o in outcomes if isinstance(o, BaseException)]
        if not self.host_network and netns_exists(self.netns_name):
            await asyncio.to_thread(pyroute2_netns.remove, self.netns_name)
        if problems:
            log.warning("sandbox %s removed with problems: %s", self.id, "; ".join(problems))

    async def reset(self, *, keep_ips: bool = False) -> None:
        """The sandbox-reset faults: a brand new sandbox (new netns, new pause) with a new IP,
        or with ``keep_ips`` the same IPs asked back from IPAM (sandbox-reset-same-ip)."""
        ips = self.ip_cidrs if keep_ips else ()
        await self.remove()
        self.generation += 1
        await self.create(ips=ips)

    # --- split-netns fault ---------------------------------------------------------------------

    async def container_netns(self, container: str) -> str:
        """A fresh namespace of the container's own, attached by CNI (its own IP); returns its
        path. Made once per container, kept across restarts."""
        if container in self._extra:
            return str(netns_path(self._extra[container][0]))
        name = f"{self.netns_name}-{container}"
        await self._make_netns(name)
        path = str(netns_path(name))
        try:
            attachment = await self.cni.add(f"{self.id}-{container}", path)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(pyroute2_netns.remove, name)
            raise
        self._extra[container] = (name, attachment)
        return path

    async def remove_container_netns(self, container: str) -> None:
        name, _ = self._extra.pop(container)
        path = str(netns_path(name))
        try:
            await self.cni.delete(f"{self.id}-{container}", path)
        finally:
            if Path(path).exists():
                await asyncio.to_thread(pyroute2_netns.remove, name)
