"""Probe pod specs: the pod objects of `conformance.kit.probes.model`' probes (the same objects
`manifests/*.yaml` show, rendered by `render_manifest`), and the ConfigMap that ships the probe
agent to them. Pure: nothing here talks to a cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client

from conformance.kit.base.settings import Settings
from conformance.kit.cluster.labels import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL
from conformance.kit.probes.layout import (
    AGENT_CONFIGMAP,
    AGENT_DIR,
    AGENT_PATH,
    CLIENT_PATH,
    agent_socket,
)
from conformance.kit.probes.model import (
    ROLE_HOSTPROBE,
    ROLE_PEER,
    ROLE_PROBE,
    ROLE_SANDBOX,
    Probe,
    ProbeContainer,
    hostport_probe,
    planned_probes,
)
from conformance.kit.probes.services import BACKEND_LABEL, BACKEND_VALUE
from conformance.probe_agent import agent_files

APP_LABEL = "app.kubernetes.io/name"
APP = "netconform-probe"
ROLE_LABEL = "netconform/role"

SCRATCH_VOLUME = "scratch"
MEMORY_VOLUME = "memory"
# Deliberately different paths per container: the rule is about the volume, not the path.
MOUNT_PATHS: Mapping[str, Mapping[str, str]] = {
    "a": {SCRATCH_VOLUME: "/vol/a/scratch", MEMORY_VOLUME: "/vol/a/memory"},
    "b": {SCRATCH_VOLUME: "/vol/b/scratch", MEMORY_VOLUME: "/vol/b/memory"},
}
SEED_MOUNT = "/seed"
SEED_FILE = "seed.txt"
SEED_CONTENT = "written by the netconform seed init container\n"
#: Every probe container's: when it fails, the tail of its log becomes its termination message.
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"


# --- specs -----------------------------------------------------------------------------------


def agent_configmap(namespace: str, run_id: str) -> client.V1ConfigMap:
    """ConfigMap ``netconform-agent``: the agent's files (``agent.py``, the modules it imports
    from its own directory, its ``client.py``), one key each, mounted together at `AGENT_DIR`."""
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(
            name=AGENT_CONFIGMAP,
            namespace=namespace,
            labels={MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id},
        ),
        data=agent_files(),
    )


def _field_env(name: str, path: str) -> client.V1EnvVar:
    return client.V1EnvVar(
        name=name,
        value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=path)),
    )


AGENT_ENV = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("NODE_NAME", "spec.nodeName"),
    ("POD_IP", "status.podIP"),
    ("HOST_IP", "status.hostIP"),
)


def serve_command(container: ProbeContainer) -> list[str]:
    """The agent's ``serve`` command: its ports (0: any free one), control socket, and the
    directories its file requests may touch (the container's volume mounts; none elsewhere)."""
    command = [
        "python3",
        AGENT_PATH,
        "serve",
        "--tcp-port",
        str(container.tcp_port),
        "--udp-port",
        str(container.udp_port),
        "--socket",
        agent_socket(container.name),
    ]
    for path in MOUNT_PATHS.get(container.name, {}).values():
        command += ["--data-dir", path]
    return command


# --- least privilege (README "Permissions") ---------------------------------------------------

#: Roles whose agents need NET_RAW, which only root keeps (Kubernetes sets no ambient
#: capabilities, so a non-root process loses added ones at exec): the pod-network probes are
#: destinations whose agents record ICMP echoes on raw sockets and run packet captures
#: (test_no_snat, test_node_to_pod, test_host_to_pod, test_full_size), and the hostNetwork probe
#: sends ICMP echoes from the node's own stack, where the ping sockets' group range is the node's
#: and a hostNetwork pod may not set it. The sandbox pods (TCP over localhost, their own restart)
#: and the seed init container run as nobody, without any capability.
NET_RAW_ROLES = (ROLE_PROBE, ROLE_PEER, ROLE_HOSTPROBE)
#: ``nobody``: present in every common base image (alpine, debian, netshoot).
NON_ROOT_USER = 65534


def container_security(*, net_raw: bool) -> client.V1SecurityContext:
    """Never privileged, no privilege escalation, every capability dropped; NET_RAW (and root,
    to keep it) only where ``net_raw``, else the non-root `NON_ROOT_USER`."""
    if net_raw:
        return client.V1SecurityContext(
            privileged=False,
            allow_privilege_escalation=False,
            run_as_user=0,
            capabilities=client.V1Capabilities(drop=["ALL"], add=["NET_RAW"]),
        )
    return client.V1SecurityContext(
        privileged=False,
        allow_privilege_escalation=False,
        run_as_non_root=True,
        run_as_user=NON_ROOT_USER,
        run_as_group=NON_ROOT_USER,
        capabilities=client.V1Capabilities(drop=["ALL"]),
    )


def _resources(
    requests_memory: str, limits_memory: str, limits_cpu: str
) -> client.V1ResourceRequirements:
    return client.V1ResourceRequirements(
        requests={"cpu": "10m", "memory": requests_memory},
        limits={"cpu": limits_cpu, "memory": limits_memory},
    )


#: The agent idles at 25-30 MB RSS (tests/unit/test_probe_agent_fuzz.py); a capture loads
#: scapy, which roughly doubles it. Requests stay small so probes fit a busy node; limits bound
#: a runaway agent without throttling a batch of parallel probes.
CAPTURING_AGENT_RESOURCES = _resources("64Mi", "256Mi", "1")
AGENT_RESOURCES = _resources("32Mi", "128Mi", "500m")
SEED_RESOURCES = _resources("16Mi", "32Mi", "100m")


#: The startup probe waits up to this long for the agent in one try (``ping --wait``).
READINESS_FIRST_WAIT = 10
#: Seconds between startup probes until the agent first answered. kubelet delays a worker's
#: first probe by a random part of its period while the kubelet itself is younger than that
#: period (pkg/kubelet/prober/worker.go), and its one early look at a just started container
#: can come too early, leaving the next a whole period later (a 60 s readiness period cost a
#: 3-node genuine 1.28 cluster 60 s either way): with 1 s, a probe pod is Ready within about
#: a second of its agent answering, on a kubelet of any age.
STARTUP_PERIOD = 1
#: Startup tries before kubelet restarts the container. A try that waits in vain takes
#: `READINESS_FIRST_WAIT` s, one that fails at once (an exec refused on a saturated node) 1 s:
#: the agent has at least a minute, more than a busy node needs to start Python.
STARTUP_FAILURES = 60
#: The Service backend whose readiness the Service checks flip: kubelet must notice at once.
#: It is the only container with a readiness probe (an exec every second, on one node); every
#: other container is Ready once its startup probe succeeded, and never probed again.
READINESS_PERIOD_FLIPPED = 1  # the least Kubernetes allows


def ping_command(container: str, wait: float = READINESS_FIRST_WAIT) -> list[str]:
    """The client's ``ping`` of ``container``'s agent: exit 0 once its serve process answers,
    waiting up to ``wait`` seconds (the startup probe, the flipped backend's readiness probe,
    and the sandbox check's wait for a restart)."""
    return [
        "python3",
        CLIENT_PATH,
        "ping",
        "--socket",
        agent_socket(container),
        "--wait",
        f"{wait:g}",
    ]


def agent_container(
    container: ProbeContainer,
    settings: Settings,
    mounts: Sequence[client.V1VolumeMount] = (),
    *,
    host_network: bool = False,
    flipped: bool = False,
    net_raw: bool = True,
    host_ports: tuple[int, int] | None = None,
) -> client.V1Container:
    """A container running the agent, Ready once the agent first answered ``ping`` (its
    startup probe); with ``flipped`` (the Service backend the readiness check turns unready),
    also probed for readiness every second. With ``net_raw`` it runs as root with NET_RAW only
    (raw ICMP, captures), else as nobody with nothing.

    hostNetwork containers declare no ports: declared ports become host ports, which kubelet
    admission would reject on a conflict with a node service. ``host_ports`` (TCP, UDP) map
    the agent's ports to those ports of the node (the hostPort probes).
    """
    ports = None
    if not host_network:
        tcp_host, udp_host = host_ports or (None, None)
        ports = [
            client.V1ContainerPort(
                name="tcp", container_port=container.tcp_port, protocol="TCP", host_port=tcp_host
            ),
            client.V1ContainerPort(
                name="udp", container_port=container.udp_port, protocol="UDP", host_port=udp_host
            ),
        ]
    return client.V1Container(
        name=container.name,
        image=settings.probe_image,
        image_pull_policy=settings.image_pull_policy,
        command=serve_command(container),
        # A crash (a port in use, no python3 in the image) leaves its stderr tail as the
        # termination message, which the deployment quotes instead of waiting out its timeout.
        termination_message_policy=TERMINATION_MESSAGE_POLICY,
        env=[_field_env(name, path) for name, path in AGENT_ENV],
        ports=ports,
        # Every probe is an exec (a process in the container): a startup probe, tried every
        # second until the agent first answers and never again, makes the pod Ready within a
        # second of its agent, even under a young kubelet's start jitter, and costs a node
        # nothing afterwards. No readiness probe follows (a container without one is Ready
        # once started), except on the one backend whose readiness the Service checks flip.
        startup_probe=client.V1Probe(
            _exec=client.V1ExecAction(command=ping_command(container.name)),
            period_seconds=STARTUP_PERIOD,
            timeout_seconds=READINESS_FIRST_WAIT + 5,
            failure_threshold=STARTUP_FAILURES,
        ),
        readiness_probe=client.V1Probe(
            _exec=client.V1ExecAction(command=ping_command(container.name)),
            period_seconds=READINESS_PERIOD_FLIPPED,
            timeout_seconds=READINESS_FIRST_WAIT + 5,
            # One failed probe is enough: the readiness check turns it unready on purpose.
            failure_threshold=1,
        )
        if flipped
        else None,
        security_context=container_security(net_raw=net_raw),
        resources=CAPTURING_AGENT_RESOURCES if net_raw and not host_network else AGENT_RESOURCES,
        volume_mounts=[
            client.V1VolumeMount(name="agent", mount_path=AGENT_DIR, read_only=True),
            *mounts,
        ],
    )


def _pod(
    probe: Probe,
    namespace: str,
    run_id: str,
    containers: list[client.V1Container],
    volumes: list[client.V1Volume],
    *,
    host_network: bool = False,
    init_containers: list[client.V1Container] | None = None,
) -> client.V1Pod:
    labels = {
        APP_LABEL: APP,
        ROLE_LABEL: probe.role,
        MANAGED_BY_LABEL: MANAGED_BY,
        RUN_LABEL: run_id,
    }
    if probe.role == ROLE_PEER:
        labels[BACKEND_LABEL] = BACKEND_VALUE  # the Services' endpoints, one per node
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=probe.name,
            namespace=namespace,
            labels=labels,
        ),
        spec=client.V1PodSpec(
            node_name=probe.node,
            host_network=host_network,
            # The hostNetwork probe is the node: it gets the node's own resolv.conf (Default),
            # which tells kubelet's fallback when it configures no cluster DNS
            # (conformance.kit.cluster.resolvers).
            dns_policy="Default" if host_network else "ClusterFirst",
            restart_policy="Always",
            termination_grace_period_seconds=2,
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")
            ),
            # The probe pods are where the Service environment variables are checked; they
            # are created after the run's Services, so kubelet sets them.
            enable_service_links=probe.role == ROLE_PROBE,
            # Pinned by spec.nodeName (the Node object's name, never a hostname): no scheduler.
            # Tolerations come from the options (pod_spec): a NoExecute taint would evict.
            tolerations=None,
            init_containers=init_containers,
            containers=containers,
            volumes=[
                client.V1Volume(
                    name="agent",
                    config_map=client.V1ConfigMapVolumeSource(
                        name=AGENT_CONFIGMAP, default_mode=0o555
                    ),
                ),
                *volumes,
            ],
        ),
    )


def _shared_volumes() -> list[client.V1Volume]:
    return [
        client.V1Volume(name=SCRATCH_VOLUME, empty_dir=client.V1EmptyDirVolumeSource()),
        client.V1Volume(
            name=MEMORY_VOLUME,
            empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit="16Mi"),
        ),
    ]


def _shared_mounts(container: str) -> list[client.V1VolumeMount]:
    return [
        client.V1VolumeMount(name=vol, mount_path=path)
        for vol, path in MOUNT_PATHS[container].items()
    ]


def seed_container(settings: Settings) -> client.V1Container:
    """Init container writing `SEED_FILE` into the scratch volume before the agents start."""
    script = (
        "import pathlib,sys; "
        f"pathlib.Path({SEED_MOUNT!r}, {SEED_FILE!r}).write_text({SEED_CONTENT!r}); sys.exit(0)"
    )
    return client.V1Container(
        name="seed",
        image=settings.probe_image,
        image_pull_policy=settings.image_pull_policy,
        command=["python3", "-c", script],
        termination_message_policy=TERMINATION_MESSAGE_POLICY,
        volume_mounts=[client.V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SEED_MOUNT)],
        security_context=container_security(net_raw=False),
        resources=SEED_RESOURCES,
    )


def pod_spec(
    probe: Probe,
    namespace: str,
    run_id: str,
    settings: Settings,
    *,
    containers: list[client.V1Container] | None = None,
) -> client.V1Pod:
    """The pod object for ``probe``, pinned to its node by ``spec.nodeName``, tolerating the
    taints the options allow and pulling with the ``--image-pull-secret`` secrets (a hostPort
    probe: with its ``containers``)."""
    if containers is not None:
        pod = _pod(probe, namespace, run_id, containers, [])
    else:
        pod = _role_pod(probe, namespace, run_id, settings)
    assert pod.spec is not None
    pod.spec.tolerations = [
        client.V1Toleration(key=t.key, operator="Exists", effect=t.effect)
        for t in settings.tolerations
    ] or None
    pod.spec.image_pull_secrets = [
        client.V1LocalObjectReference(name=s.name) for s in settings.image_pull_secrets
    ] or None
    return pod


def images_to_pull(settings: Settings) -> tuple[str, ...]:
    """Every image a run's probe pods use (init containers included), sorted, once each."""
    images: set[str] = set()
    pods = [pod_spec(probe, "ns", "run", settings) for probe in planned_probes(["node"])]
    pods.append(hostport_pod(hostport_probe("node"), (20000, 20001), "ns", "run", settings))
    for pod in pods:
        spec = pod.spec
        assert spec is not None
        images.update(str(c.image) for c in (spec.init_containers or []) + spec.containers)
    return tuple(sorted(images))


def _role_pod(probe: Probe, namespace: str, run_id: str, settings: Settings) -> client.V1Pod:
    if probe.role in (ROLE_PROBE, ROLE_SANDBOX):
        containers = [
            agent_container(
                c,
                settings,
                _shared_mounts(c.name),
                net_raw=probe.role in NET_RAW_ROLES,
            )
            for c in probe.containers
        ]
        init = [seed_container(settings)] if probe.role == ROLE_PROBE else None
        return _pod(probe, namespace, run_id, containers, _shared_volumes(), init_containers=init)
    if probe.role == ROLE_HOSTPROBE:
        # hostNetwork: the node's own network stack is what test_node_to_pod and
        # test_host_to_pod check (node agents reach pods); no other way to get it.
        return _pod(
            probe,
            namespace,
            run_id,
            [agent_container(probe.containers[0], settings, host_network=True)],
            [],
            host_network=True,
        )
    if probe.role == ROLE_PEER:
        container = agent_container(probe.containers[0], settings, flipped=probe.readiness_target)
        return _pod(probe, namespace, run_id, [container], [])
    raise ValueError(f"unknown probe role {probe.role!r}")


def hostport_pod(
    probe: Probe,
    host_ports: tuple[int, int],
    namespace: str,
    run_id: str,
    settings: Settings,
    *,
    tcp_only: bool = False,
) -> client.V1Pod:
    """A hostPort probe: the agent's TCP and UDP ports mapped to the node's ``host_ports``
    (with ``tcp_only``, the TCP one alone: the pod that asks for a taken port again). No raw
    sockets or captures: it only answers on its listeners, as nobody."""
    container = agent_container(probe.containers[0], settings, net_raw=False, host_ports=host_ports)
    if tcp_only and container.ports:
        container.ports = container.ports[:1]
    return pod_spec(probe, namespace, run_id, settings, containers=[container])


def to_manifest(obj: Any) -> dict[str, Any]:
    """A client model as the plain dict `kubectl apply` takes (camelCase, no nulls)."""
    result: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result


# --- manifests/ (the same pods as YAML a person can kubectl apply) -----------------------------

MANIFEST_NODE = "NODE_NAME"
MANIFEST_NAMESPACE = "netconform-manual"
MANIFEST_RUN = "manual"
MANIFEST_FILES = {
    ROLE_PROBE: "probe-pod.yaml",
    ROLE_HOSTPROBE: "hostnetwork-probe.yaml",
    ROLE_PEER: "peer-pod.yaml",
    ROLE_SANDBOX: "sandbox-pod.yaml",
}
_MANIFEST_HEADER = """\
# Generated from conformance/kit/probes/podspecs.py (pod_spec); tests/unit/test_podspecs.py keeps it in
# sync. To run by hand: replace {node} with a node name, then
#   kubectl create namespace {namespace}
#   kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged
#   kubectl -n {namespace} create configmap {configmap} \\
#       --from-file=conformance/probe_agent/
#   kubectl apply -f manifests/{file}
"""


def render_manifest(role: str, settings: Settings | None = None) -> str:
    """The YAML of one probe pod with placeholder node and namespace (for ``manifests/``)."""
    import yaml  # a dependency of the kubernetes client

    probe = next(p for p in planned_probes([MANIFEST_NODE]) if p.role == role)
    pod = pod_spec(
        probe, MANIFEST_NAMESPACE, MANIFEST_RUN, settings or Settings(kubeconfig=None, context=None)
    )
    header = _MANIFEST_HEADER.format(
        node=MANIFEST_NODE,
        namespace=MANIFEST_NAMESPACE,
        configmap=AGENT_CONFIGMAP,
        file=MANIFEST_FILES[role],
    )
    body: str = yaml.safe_dump(to_manifest(pod), sort_keys=False, default_flow_style=False)
    return header + body
