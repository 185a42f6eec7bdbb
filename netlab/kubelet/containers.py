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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netlab.contract import ConfigMapLookup
from netlab.dataplane.images import Image, ImageConfig, process_args
from netlab.dataplane.runtime import (
    DEFAULT_CAPABILITIES,
    ContainerConfig,
    Mount,
    bind,
    known_capabilities,
)
from netlab.kubelet.errors import ContainerConfigError
from netlab.spec import LabSpec

if TYPE_CHECKING:
    from netlab.kubelet.volumes import PodVolumes

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- /etc files --------------------------------------------------------------------------------


CLUSTER_DOMAIN = "cluster.local"  # kubelet's --cluster-domain (kubeadm's default)
NO_CLUSTER_DNS_FAULT = "no-cluster-dns"  # kubelet without --cluster-dns (clusterDNS)
# kubelet's own words (dns.go GetPodDNS) when a ClusterFirst pod falls back to Default.
MISSING_CLUSTER_DNS = (
    'kubelet does not have ClusterDNS IP configured and cannot create Pod using "ClusterFirst" '
    'policy. Falling back to "Default" policy.'
)
# kubelet's own limits on a pod's resolv.conf (validation.MaxDNSNameservers, MaxDNSSearchPaths).
MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32


def cluster_dns_address(spec: LabSpec) -> str:
    """kubelet's --cluster-dns: the tenth address of the primary service range (kubeadm's
    choice), where the lab's kube-dns Service lives."""
    return str(ipaddress.ip_network(spec.service_cidrs[0]).network_address + 10)


def _host_resolv() -> tuple[list[str], list[str], list[str]]:
    """The host's resolv.conf: (nameservers, search paths, options)."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver":
            servers += fields[1:2]
        elif fields[0] in ("search", "domain"):
            searches = fields[1:]
        elif fields[0] == "options":
            options += fields[1:]
    return servers, searches, options


def wants_cluster_dns(pod_spec: Mapping[str, Any], *, host_network: bool) -> bool:
    """The pod's dnsPolicy asks for the cluster DNS: ClusterFirst (ClusterFirstWithHostNet for
    hostNetwork pods), kubelet's podDNSCluster."""
    policy = str(pod_spec.get("dnsPolicy") or "ClusterFirst")
    return policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host_network)


def resolv_conf(
    pod_spec: Mapping[str, Any], namespace: str, spec: LabSpec, *, host_network: bool
) -> str:
    """/etc/resolv.conf as kubelet (dns.go GetPodDNS) and containerd write it for the pod's
    dnsPolicy: ClusterFirst (ClusterFirstWithHostNet for hostNetwork pods) gets the cluster
    DNS, its search paths before the host's and ndots:5; Default, and ClusterFirst on the host
    network, the host's; None only dnsConfig. dnsConfig is merged in last. Under
    ``no-cluster-dns`` kubelet has no cluster DNS: ClusterFirst falls back to the host's."""
    cluster_first = wants_cluster_dns(pod_spec, host_network=host_network)
    if NO_CLUSTER_DNS_FAULT in spec.faults:
        cluster_first = False  # kubelet falls back to Default, with a MissingClusterDNS event
    policy = str(pod_spec.get("dnsPolicy") or "ClusterFirst")
    host_servers, host_searches, host_options = _host_resolv()
    if policy == "None":
        servers, searches, options = [], [], []
    elif cluster_first:
        servers = [cluster_dns_address(spec)]
        searches = [
            f"{namespace}.svc.{CLUSTER_DOMAIN}",
            f"svc.{CLUSTER_DOMAIN}",
            CLUSTER_DOMAIN,
            *host_searches,
        ]
        options = ["ndots:5"]
    else:
        servers, searches, options = host_servers, host_searches, host_options
    config = pod_spec.get("dnsConfig") or {}
    servers += [str(s) for s in config.get("nameservers") or [] if str(s) not in servers]
    searches += [str(s) for s in config.get("searches") or [] if str(s) not in searches]
    by_name = {option.split(":", 1)[0]: option for option in options}
    for option in config.get("options") or []:
        value = option.get("value")
        by_name[str(option["name"])] = f"{option['name']}:{value}" if value else option["name"]
    lines = []
    if searches:
        lines.append("search " + " ".join(list(dict.fromkeys(searches))[:MAX_SEARCH_PATHS]))
    lines += [f"nameserver {server}" for server in servers[:MAX_NAMESERVERS]]
    if by_name:
        lines.append("options " + " ".join(by_name.values()))
    return "\n".join(lines) + "\n"


def write_etc_files(
    directory: Path,
    *,
    hostname: str,
    pod_ips: Sequence[str],
    host_network: bool,
    namespace: str,
    spec: LabSpec,
    pod_spec: Mapping[str, Any] | None = None,
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
    resolv = resolv_conf(pod_spec or {}, namespace, spec, host_network=host_network)
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

# Services whose variables every pod gets, enableServiceLinks or not (kubelet's masterServices).
MASTER_SERVICES = ("kubernetes",)


def _env_name(name: str) -> str:
    """envvars.makeEnvVariableName: upper case, '-' and '.' to '_', '_' before a digit."""
    text = name.upper().replace("-", "_").replace(".", "_")
    return f"_{text}" if text[:1].isdigit() else text


def _host_port(host: str, port: int) -> str:
    """net.JoinHostPort: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_environment(
    services: Sequence[Mapping[str, Any]], namespace: str, *, enable_service_links: bool
) -> dict[str, str]:
    """The docker-link style variables kubelet gives a pod (getServiceEnvVarMap and
    envvars.FromServices): for each Service with a cluster IP in the pod's namespace (when
    ``enable_service_links``) and for default/kubernetes always, NAME_SERVICE_HOST,
    NAME_SERVICE_PORT[_PORTNAME], NAME_PORT and NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for service in services:
        meta = service.get("metadata") or {}
        spec = service.get("spec") or {}
        if spec.get("clusterIP") in (None, "", "None") or not spec.get("ports"):
            continue
        name = str(meta.get("name", ""))
        if meta.get("namespace") == "default" and name in MASTER_SERVICES:
            chosen.setdefault(name, service)
        elif meta.get("namespace") == namespace and enable_service_links:
            chosen[name] = service
    variables: dict[str, str] = {}
    for name, service in chosen.items():
        spec = service["spec"]
        host = str(spec["clusterIP"])
        prefix = _env_name(name)
        ports = spec["ports"]
        variables[f"{prefix}_SERVICE_HOST"] = host
        variables[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                variables[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        for index, port in enumerate(ports):
            protocol = str(port.get("protocol") or "TCP")
            url = f"{protocol.lower()}://{_host_port(host, int(port['port']))}"
            if index == 0:
                variables[f"{prefix}_PORT"] = url
            port_prefix = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
            variables[port_prefix] = url
            variables[f"{port_prefix}_PROTO"] = protocol.lower()
            variables[f"{port_prefix}_PORT"] = str(port["port"])
            variables[f"{port_prefix}_ADDR"] = host
    return variables


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
    # The Service variables of the pod (``service_environment``), fixed when the pod started.
    service_env: Mapping[str, str] = field(default_factory=dict)


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


def container_environment(
    context: PodContext, container: Mapping[str, Any], image_env: Sequence[str] = ()
) -> list[str]:
    """The env list (``K=V``) kubelet would give ``container``, references expanded: the
    image's Env first (containerd's), then the Service variables, so the container's own env
    and envFrom override them and ``$(VAR)`` can refer to them, as kubelet's
    makeEnvironmentVariables does."""
    hostname = str(context.pod.get("metadata", {}).get("name", ""))
    variables: dict[str, str] = {"PATH": DEFAULT_PATH}
    for entry in image_env:
        key, equals, setting = entry.partition("=")
        if equals:
            variables[key] = setting
    variables["HOSTNAME"] = hostname
    variables.update(context.service_env)
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


def container_config(
    context: PodContext, container: Mapping[str, Any], *, image: Image | None = None
) -> ContainerConfig:
    """Translate a v1 Container of the pod into runc terms (containerd's CRI semantics);
    ``image``: the imported image it names (its files, Entrypoint, Cmd, Env, WorkingDir), None
    for the host view alone."""
    name = str(container["name"])
    image_config = image.config if image is not None else ImageConfig()
    env = container_environment(context, container, image_config.env)
    variables = dict(entry.split("=", 1) for entry in env)
    command = [expand_references(str(a), variables) for a in container.get("command") or []]
    args = [expand_references(str(a), variables) for a in container.get("args") or []]
    argv = process_args(command, args, image_config)
    if not argv:
        where = "its image" if image is not None else "the host image (no --image archive names it)"
        raise ContainerConfigError(
            "CreateContainerError",
            f"container {name} has neither command nor args, and {where} has no entrypoint",
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
        cwd=str(container.get("workingDir") or image_config.working_dir or "/"),
        image_rootfs=image.rootfs if image is not None else None,
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
