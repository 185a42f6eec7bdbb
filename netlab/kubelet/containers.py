"""Pod spec to container config, as kubelet's kuberuntime builds a CRI ContainerConfig:
environment (``$(VAR)`` references, the downward API, configMap keys), capabilities and user,
the container's mounts (its volumes, the pod's /etc files and /dev/shm) and namespaces.

``container_config`` is pure apart from the configMap lookups: it turns a v1 Container of a
running pod into the ``ContainerConfig`` the runtime (``netlab.dataplane.runtime``) runs.
``write_etc_files`` writes the pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, which
every container of the pod bind-mounts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netlab.contract import ConfigMapLookup
from netlab.dataplane.runtime import (
    DEFAULT_CAPABILITIES,
    ContainerConfig,
    Mount,
    bind,
    known_capabilities,
)
from netlab.spec import LabSpec

if TYPE_CHECKING:
    from netlab.kubelet.volumes import PodVolumes

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerConfigError(ValueError):
    """A container spec this kubelet cannot run; ``reason`` is the kubelet waiting reason
    (``CreateContainerConfigError``, ``CreateContainerError``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- /etc files --------------------------------------------------------------------------------


def write_etc_files(
    directory: Path,
    *,
    hostname: str,
    pod_ips: Sequence[str],
    host_network: bool,
    namespace: str,
    spec: LabSpec,
) -> dict[str, Path]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf as kubelet writes them for a pod."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    hosts += [f"{ip}\t{hostname}" for ip in pod_ips]
    # kubeadm's cluster DNS address, in the primary family's service range.
    service = ipaddress.ip_network(spec.service_cidrs[0])
    dns_server = service.network_address + 10
    if host_network:
        resolv = Path("/etc/resolv.conf").read_text()  # ClusterFirst falls back to the host's
    else:
        resolv = (
            f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
            f"nameserver {dns_server}\noptions ndots:5\n"
        )
    paths = {
        "/etc/hostname": directory / "hostname",
        "/etc/hosts": directory / "hosts",
        "/etc/resolv.conf": directory / "resolv.conf",
    }
    paths["/etc/hostname"].write_text(hostname + "\n")
    paths["/etc/hosts"].write_text("\n".join(hosts) + "\n")
    paths["/etc/resolv.conf"].write_text(resolv)
    return paths


# --- environment, capabilities, mounts ---------------------------------------------------------


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_references(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names replaced, ``$$`` escapes, others kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return variables.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


def _capability_name(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def capabilities_for(security: Mapping[str, Any]) -> tuple[str, ...]:
    """containerd's default set with the container's add/drop applied (ALL supported)."""
    changes = security.get("capabilities") or {}
    add = [_capability_name(c) for c in changes.get("add") or []]
    drop = [_capability_name(c) for c in changes.get("drop") or []]
    caps = list(DEFAULT_CAPABILITIES)
    if "CAP_ALL" in add:
        caps = known_capabilities()
    caps = [] if "CAP_ALL" in drop else [c for c in caps if c not in drop]
    for cap in add:
        if cap != "CAP_ALL" and cap not in caps:
            caps.append(cap)
    return tuple(caps)


@dataclass(frozen=True)
class PodContext:
    """What the downward API and the container namespaces need of the running pod."""

    pod: Mapping[str, Any]
    node_name: str
    pod_ips: tuple[str, ...]
    host_ip: str
    net_path: str
    uts_path: str
    ipc_path: str
    etc_files: Mapping[str, Path]
    shm_dir: Path
    volumes: PodVolumes
    configmaps: ConfigMapLookup
    host_ips: tuple[str, ...] = ()  # the node's addresses, primary first (host_ip is [0])


def field_value(context: PodContext, field_path: str) -> str:
    pod = context.pod
    metadata = pod.get("metadata", {})
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", "default"),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": context.node_name,
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": context.pod_ips[0] if context.pod_ips else "",
        "status.podIPs": ",".join(context.pod_ips),
        "status.hostIP": context.host_ip,
        "status.hostIPs": ",".join(context.host_ips or (context.host_ip,)),
    }
    if field_path in simple:
        return str(simple[field_path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerConfigError(
        "CreateContainerConfigError", f"unsupported fieldRef fieldPath {field_path}"
    )


def _configmap_value(context: PodContext, ref: Mapping[str, Any]) -> str | None:
    namespace = str(context.pod.get("metadata", {}).get("namespace", "default"))
    data = context.configmaps(namespace, str(ref.get("name", "")))
    if data is None or ref.get("key") not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(
            "CreateContainerConfigError",
            f"couldn't find key {ref.get('key')} in ConfigMap {namespace}/{ref.get('name')}",
        )
    return str(data[ref["key"]])


def container_environment(context: PodContext, container: Mapping[str, Any]) -> list[str]:
    """The env list (``K=V``) kubelet would give ``container``, references expanded."""
    hostname = str(context.pod.get("metadata", {}).get("name", ""))
    variables: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is None:
            continue
        namespace = str(context.pod.get("metadata", {}).get("namespace", "default"))
        data = context.configmaps(namespace, str(ref.get("name", "")))
        if data is None and not ref.get("optional"):
            raise ContainerConfigError(
                "CreateContainerConfigError", f'configmap "{ref.get("name")}" not found'
            )
        prefix = str(source.get("prefix", ""))
        variables.update({prefix + k: str(v) for k, v in (data or {}).items()})
    for entry in container.get("env") or []:
        name = str(entry["name"])
        if "valueFrom" in entry:
            value_from = entry["valueFrom"]
            if "fieldRef" in value_from:
                variables[name] = field_value(context, str(value_from["fieldRef"]["fieldPath"]))
            elif "configMapKeyRef" in value_from:
                value = _configmap_value(context, value_from["configMapKeyRef"])
                if value is not None:
                    variables[name] = value
            else:
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f"env {name}: unsupported valueFrom {sorted(value_from)}",
                )
        else:
            variables[name] = expand_references(str(entry.get("value", "")), variables)
    return [f"{key}={value}" for key, value in variables.items()]


def container_config(context: PodContext, container: Mapping[str, Any]) -> ContainerConfig:
    """Translate a v1 Container of the pod into runc terms (containerd's CRI semantics)."""
    name = str(container["name"])
    env = container_environment(context, container)
    variables = dict(entry.split("=", 1) for entry in env)
    command = [expand_references(str(a), variables) for a in container.get("command") or []]
    args = [expand_references(str(a), variables) for a in container.get("args") or []]
    # The host view has no image entrypoint: command overrides nothing, args alone run as-is.
    argv = command + args
    if not argv:
        raise ContainerConfigError(
            "CreateContainerError",
            f"container {name} has neither command nor args, and the host image has no entrypoint",
        )
    pod_security = context.pod.get("spec", {}).get("securityContext") or {}
    security = container.get("securityContext") or {}
    uid = security.get("runAsUser", pod_security.get("runAsUser", 0))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup", 0))
    groups = [int(g) for g in pod_security.get("supplementalGroups") or []]
    if pod_security.get("fsGroup") is not None:
        groups.append(int(pod_security["fsGroup"]))
    privileged = bool(security.get("privileged", False))
    mounts: list[Mount] = [
        bind(path, destination) for destination, path in context.etc_files.items()
    ]
    mounts.append(bind(context.shm_dir, "/dev/shm"))  # shared with the pod, like its IPC
    for volume_mount in container.get("volumeMounts") or []:
        volume = str(volume_mount["name"])
        source = context.volumes.host_path(volume, name)
        sub_path = str(volume_mount.get("subPath", ""))
        if sub_path:
            source = source / sub_path
            if not context.volumes.is_configmap(volume):
                source.mkdir(parents=True, exist_ok=True)
        readonly = bool(volume_mount.get("readOnly")) or context.volumes.is_configmap(volume)
        mounts.append(bind(source, str(volume_mount["mountPath"]), readonly=readonly))
    return ContainerConfig(
        args=tuple(argv),
        env=tuple(env),
        cwd=str(container.get("workingDir") or "/"),
        uid=int(uid),
        gid=int(gid),
        additional_gids=tuple(groups),
        capabilities=capabilities_for(security),
        privileged=privileged,
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        namespaces={
            "pid": None,
            "mount": None,
            "network": context.net_path,
            "uts": context.uts_path,
            "ipc": context.ipc_path,
        },
        mounts=tuple(mounts),
    )
