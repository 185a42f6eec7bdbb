"""Probe pods: their specs (the same objects `manifests/*.yaml` show), deployment in parallel,
and waiting for Ready with a watch that explains, per pod, why a probe never came up."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.cluster import (
    ClusterError,
    call_api,
    describe_api_error,
    name_of,
    pod_ips,
    resource_version_of,
    watch_events,
)
from conformance.kit.namespace import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL, describe_pod
from conformance.kit.report import ClusterFacts, write_summary
from conformance.kit.settings import Settings, Timeouts
from conformance.probe_agent import agent_source

AGENT_CONFIGMAP = "netconform-agent"
AGENT_KEY = "agent.py"
AGENT_DIR = "/netconform"
AGENT_PATH = f"{AGENT_DIR}/{AGENT_KEY}"
APP_LABEL = "app.kubernetes.io/name"
APP = "netconform-probe"
ROLE_LABEL = "netconform/role"

ROLE_PROBE = "probe"  # per node, pod network, containers a and b with shared volumes
ROLE_HOSTPROBE = "hostprobe"  # per node, hostNetwork
ROLE_PEER = "peer"  # first node only, second pod there for same-node pairs
ROLE_SANDBOX = "sandbox"  # first node only, the sandbox check kills one of its containers
ROLES = (ROLE_PROBE, ROLE_HOSTPROBE, ROLE_PEER, ROLE_SANDBOX)

# Two agents share a pod's network namespace, so each container gets its own ports. The
# hostNetwork agent uses high ports to stay clear of node services.
POD_PORTS = {"a": (8080, 8081), "b": (8082, 8083), "agent": (8080, 8081)}
HOST_PORTS = (38080, 38081)

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

# Reasons a container will not get past however long we wait.
FATAL_WAITING_REASONS = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)


class ProbeDeploymentError(Exception):
    """The probes could not be deployed or never became Ready: the suite could not test."""


@dataclass(frozen=True)
class AgentEndpoint:
    """One agent: the container it runs in and its listener ports."""

    container: str
    tcp_port: int
    udp_port: int

    def port(self, proto: str) -> int:
        """The listener port for ``proto``: UDP's own, TCP's for tcp (and icmp, which has none)."""
        return self.udp_port if proto == "udp" else self.tcp_port


@dataclass(frozen=True)
class Probe:
    """A deployed probe pod. IPs are filled in once it is Ready."""

    name: str
    role: str
    node: str
    agents: tuple[AgentEndpoint, ...]
    pod_ips: tuple[str, ...] = ()
    host_ip: str = ""

    def agent(self, container: str | None = None) -> AgentEndpoint:
        """The agent in ``container`` (the first one by default)."""
        if container is None:
            return self.agents[0]
        for agent in self.agents:
            if agent.container == container:
                return agent
        raise KeyError(f"pod {self.name} has no agent container {container!r}")

    def describe(self) -> str:
        return f"{self.name} on {self.node} ({', '.join(self.pod_ips) or 'no IP'})"


@dataclass(frozen=True)
class ProbeMap:
    """Every probe of a run, shared between xdist workers as JSON."""

    namespace: str
    probes: tuple[Probe, ...] = field(default_factory=tuple)

    def of_role(self, role: str) -> tuple[Probe, ...]:
        return tuple(p for p in self.probes if p.role == role)

    def get(self, role: str, node: str) -> Probe:
        for probe in self.probes:
            if probe.role == role and probe.node == node:
                return probe
        raise KeyError(f"no {role} probe on node {node} in namespace {self.namespace}")

    def find(self, role: str, node: str) -> Probe | None:
        try:
            return self.get(role, node)
        except KeyError:
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProbeMap:
        raw = json.loads(text)
        probes = tuple(
            Probe(
                name=p["name"],
                role=p["role"],
                node=p["node"],
                agents=tuple(AgentEndpoint(**a) for a in p["agents"]),
                pod_ips=tuple(p["pod_ips"]),
                host_ip=p["host_ip"],
            )
            for p in raw["probes"]
        )
        return cls(namespace=raw["namespace"], probes=probes)


def pod_name(role: str, node: str) -> str:
    """``<role>-<node>``, cut to a DNS label so the pod's hostname stays valid."""
    name = f"{role}-{node}".lower().replace("_", "-")
    return name[:63].rstrip("-.")


def planned_probes(nodes: Sequence[str]) -> tuple[Probe, ...]:
    """The probes for the selected nodes (sorted): probe and hostprobe on each, peer and
    sandbox on the first."""
    probes: list[Probe] = []
    pair = (AgentEndpoint("a", *POD_PORTS["a"]), AgentEndpoint("b", *POD_PORTS["b"]))
    for node in nodes:
        probes.append(Probe(pod_name(ROLE_PROBE, node), ROLE_PROBE, node, pair))
        probes.append(
            Probe(
                pod_name(ROLE_HOSTPROBE, node),
                ROLE_HOSTPROBE,
                node,
                (AgentEndpoint("agent", *HOST_PORTS),),
            )
        )
    if nodes:
        first = nodes[0]
        probes.append(
            Probe(
                pod_name(ROLE_PEER, first),
                ROLE_PEER,
                first,
                (AgentEndpoint("agent", *POD_PORTS["agent"]),),
            )
        )
        probes.append(Probe(pod_name(ROLE_SANDBOX, first), ROLE_SANDBOX, first, pair))
    return tuple(probes)


# --- specs -----------------------------------------------------------------------------------


def agent_configmap(namespace: str, run_id: str) -> client.V1ConfigMap:
    """ConfigMap ``netconform-agent`` holding ``agent.py``."""
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(
            name=AGENT_CONFIGMAP,
            namespace=namespace,
            labels={MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id},
        ),
        data={AGENT_KEY: agent_source()},
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


def agent_socket(container: str) -> str:
    """Control socket of the agent in ``container``: distinct per container, so two agents of
    one pod never meet even where containers share /tmp."""
    return f"/tmp/netconform-agent-{container}.sock"


def serve_command(agent: AgentEndpoint) -> list[str]:
    return [
        "python3",
        AGENT_PATH,
        "serve",
        "--tcp-port",
        str(agent.tcp_port),
        "--udp-port",
        str(agent.udp_port),
        "--socket",
        agent_socket(agent.container),
    ]


#: Readiness of agent containers: the first probe waits up to this long for the agent.
READINESS_FIRST_WAIT = 10
#: Seconds between later readiness probes (the sandbox pod's restarts need a quicker eye).
READINESS_PERIOD = 30
READINESS_PERIOD_SANDBOX = 2


def agent_container(
    agent: AgentEndpoint,
    settings: Settings,
    mounts: Sequence[client.V1VolumeMount] = (),
    *,
    host_network: bool = False,
    readiness_period: int = READINESS_PERIOD,
) -> client.V1Container:
    """A container running the agent, Ready when the agent answers ``ping``.

    hostNetwork containers declare no ports: declared ports become host ports, which kubelet
    admission would reject on a conflict with a node service.
    """
    ports = None
    if not host_network:
        ports = [
            client.V1ContainerPort(name="tcp", container_port=agent.tcp_port, protocol="TCP"),
            client.V1ContainerPort(name="udp", container_port=agent.udp_port, protocol="UDP"),
        ]
    return client.V1Container(
        name=agent.container,
        image=settings.probe_image,
        image_pull_policy=settings.image_pull_policy,
        command=serve_command(agent),
        env=[_field_env(name, path) for name, path in AGENT_ENV],
        ports=ports,
        # The first probe waits for the agent (ping --wait), so the pod is Ready as soon as the
        # agent answers; later probes only notice a dead agent. Each probe is an exec (a process
        # in the container), so they are rare: every 2 s on every container cost a 3-node lab
        # 0.6 of a core, and 30 nodes would need more CPU than the machine has.
        readiness_probe=client.V1Probe(
            _exec=client.V1ExecAction(
                command=[
                    "python3",
                    AGENT_PATH,
                    "ping",
                    "--socket",
                    agent_socket(agent.container),
                    "--wait",
                    str(READINESS_FIRST_WAIT),
                ]
            ),
            period_seconds=readiness_period,
            timeout_seconds=READINESS_FIRST_WAIT + 5,
            failure_threshold=3,
        ),
        security_context=client.V1SecurityContext(
            # NET_RAW: ICMP and the scapy sniffer. Nothing else is needed.
            capabilities=client.V1Capabilities(add=["NET_RAW"]),
            allow_privilege_escalation=False,
        ),
        resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "64Mi"}),
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
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=probe.name,
            namespace=namespace,
            labels={
                APP_LABEL: APP,
                ROLE_LABEL: probe.role,
                MANAGED_BY_LABEL: MANAGED_BY,
                RUN_LABEL: run_id,
            },
        ),
        spec=client.V1PodSpec(
            node_name=probe.node,
            host_network=host_network,
            dns_policy="ClusterFirstWithHostNet" if host_network else "ClusterFirst",
            restart_policy="Always",
            termination_grace_period_seconds=2,
            automount_service_account_token=False,
            enable_service_links=False,
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
        volume_mounts=[client.V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SEED_MOUNT)],
        resources=client.V1ResourceRequirements(requests={"cpu": "10m", "memory": "16Mi"}),
    )


def pod_spec(probe: Probe, namespace: str, run_id: str, settings: Settings) -> client.V1Pod:
    """The pod object for ``probe``, pinned to its node by ``spec.nodeName``, tolerating the
    taints the options allow and pulling with the ``--image-pull-secret`` secrets."""
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
    for probe in planned_probes(["node"]):
        spec = pod_spec(probe, "ns", "run", settings).spec
        assert spec is not None
        images.update(str(c.image) for c in (spec.init_containers or []) + spec.containers)
    return tuple(sorted(images))


def copy_pull_secrets(
    core: client.CoreV1Api, namespace: str, run_id: str, settings: Settings
) -> None:
    """Copy the ``--image-pull-secret`` Secrets into the run namespace (pods can only use
    Secrets of their own namespace). A missing or unreadable Secret is a `ProbeDeploymentError`."""
    for secret in settings.image_pull_secrets:
        try:
            source = call_api(
                f"read secret {secret}",
                core.read_namespaced_secret,
                secret.name,
                secret.namespace,
                timeouts=settings.timeouts,
            )
        except ApiException as exc:
            raise ProbeDeploymentError(
                f"--image-pull-secret {secret}: {describe_api_error(exc)}"
            ) from exc
        except ClusterError as exc:
            raise ProbeDeploymentError(f"--image-pull-secret {secret}: {exc}") from exc
        copy = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(
                name=secret.name,
                namespace=namespace,
                labels={MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id},
            ),
            type=source.type,
            data=source.data,
        )
        try:
            call_api(
                f"create secret {secret.name} in {namespace}",
                core.create_namespaced_secret,
                namespace,
                copy,
                timeouts=settings.timeouts,
            )
        except (ApiException, ClusterError) as exc:
            raise ProbeDeploymentError(
                f"--image-pull-secret {secret}: copy into {namespace} failed: {exc}"
            ) from exc


def _role_pod(probe: Probe, namespace: str, run_id: str, settings: Settings) -> client.V1Pod:
    if probe.role in (ROLE_PROBE, ROLE_SANDBOX):
        # The sandbox check waits for its restarted container to be Ready again: probe it often.
        period = READINESS_PERIOD_SANDBOX if probe.role == ROLE_SANDBOX else READINESS_PERIOD
        containers = [
            agent_container(a, settings, _shared_mounts(a.container), readiness_period=period)
            for a in probe.agents
        ]
        init = [seed_container(settings)] if probe.role == ROLE_PROBE else None
        return _pod(probe, namespace, run_id, containers, _shared_volumes(), init_containers=init)
    if probe.role == ROLE_HOSTPROBE:
        return _pod(
            probe,
            namespace,
            run_id,
            [agent_container(probe.agents[0], settings, host_network=True)],
            [],
            host_network=True,
        )
    if probe.role == ROLE_PEER:
        return _pod(probe, namespace, run_id, [agent_container(probe.agents[0], settings)], [])
    raise ValueError(f"unknown probe role {probe.role!r}")


def to_manifest(obj: Any) -> dict[str, Any]:
    """A client model as the plain dict `kubectl apply` takes (camelCase, no nulls)."""
    result: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result


# --- deployment ------------------------------------------------------------------------------


def pod_ready(pod: client.V1Pod) -> bool:
    """The pod's Ready condition is True."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def fatal_reason(pod: client.V1Pod) -> str | None:
    """Why ``pod`` will never become Ready, when that is already certain."""
    status = pod.status
    if status is None:
        return None
    if status.phase in ("Failed", "Succeeded"):
        return f"pod phase {status.phase}: {status.reason or ''} {status.message or ''}".strip()
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in FATAL_WAITING_REASONS:
            return f"container {cs.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
    return None


def explain_not_ready(
    pod: client.V1Pod | None, name: str, events: Iterable[client.CoreV1Event]
) -> str:
    """Why pod ``name`` is not Ready: its state, waiting reasons, scheduling and events."""
    if pod is None:
        lines = [f"pod {name}: not found (never created, or deleted)"]
    else:
        lines = [describe_pod(pod)]
    for event in events:
        obj = event.involved_object
        if obj is not None and obj.name == name and event.type != "Normal":
            lines.append(f"  event {event.reason}: {event.message} (x{event.count or 1})")
    return "\n".join(lines)


def wait_for_pods(
    core: client.CoreV1Api,
    namespace: str,
    names: Iterable[str],
    *,
    timeout: float,
    condition: Callable[[client.V1Pod], bool] = pod_ready,
    what: str = "Ready",
    timeouts: Timeouts,
) -> dict[str, client.V1Pod]:
    """Watch the namespace until every pod in ``names`` meets ``condition`` (default Ready).

    Raises `ProbeDeploymentError` at the deadline, or early when a pod cannot recover, with the
    cause per pod (image pull, scheduling, admission, crash loop...).
    """
    wanted = set(names)
    latest: dict[str, client.V1Pod] = {}
    deadline = monotonic() + timeout

    def check() -> bool:
        fatal = {n: r for n in wanted if n in latest and (r := fatal_reason(latest[n]))}
        if fatal:
            raise ProbeDeploymentError(
                "probe pods cannot start:\n"
                + "\n".join(f"  {n}: {r}" for n, r in sorted(fatal.items()))
            )
        return all(n in latest and condition(latest[n]) for n in wanted)

    while (remaining := deadline - monotonic()) > 0:
        listed = call_api(
            f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
        )
        latest = {name_of(p): p for p in listed.items if name_of(p) in wanted}
        if check():
            return latest
        try:
            for event in watch_events(
                core.list_namespaced_pod,
                namespace,
                resource_version=resource_version_of(listed),
                timeout=remaining,
            ):
                pod = event["object"]
                if name_of(pod) not in wanted:
                    continue
                if event["type"] == "DELETED":
                    latest.pop(name_of(pod), None)
                else:
                    latest[name_of(pod)] = pod
                if check():
                    return latest
                if monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: the watch expired, list again
                raise ClusterError(f"watch pods in {namespace}: {describe_api_error(exc)}") from exc
        except urllib3.exceptions.HTTPError:
            pass  # the watch connection dropped; list again while time remains

    events: list[client.CoreV1Event] = []
    try:
        events = list(
            call_api(
                f"list events in {namespace}",
                core.list_namespaced_event,
                namespace,
                timeouts=timeouts,
            ).items
        )
    except (ClusterError, ApiException):
        events = []
    pending = sorted(n for n in wanted if not (n in latest and condition(latest[n])))
    raise ProbeDeploymentError(
        f"{len(pending)} of {len(wanted)} probe pods not {what} after {timeout:.0f}s:\n"
        + "\n".join(explain_not_ready(latest.get(n), n, events) for n in pending)
    )


def deploy_probes(
    core: client.CoreV1Api,
    namespace: str,
    run_id: str,
    nodes: Sequence[str],
    settings: Settings,
) -> ProbeMap:
    """Create the agent ConfigMap and every probe pod (in parallel), wait until all are Ready,
    and return the map with their IPs."""
    timeouts = settings.timeouts
    if not nodes:
        raise ProbeDeploymentError("no nodes selected for probes")
    call_api(
        f"create configmap {AGENT_CONFIGMAP} in {namespace}",
        core.create_namespaced_config_map,
        namespace,
        agent_configmap(namespace, run_id),
        timeouts=timeouts,
    )
    copy_pull_secrets(core, namespace, run_id, settings)
    planned = planned_probes(nodes)

    def create(probe: Probe) -> str | None:
        try:
            call_api(
                f"create pod {probe.name}",
                core.create_namespaced_pod,
                namespace,
                pod_spec(probe, namespace, run_id, settings),
                timeouts=timeouts,
            )
        except (ClusterError, ApiException) as exc:
            return f"  {probe.name}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=min(16, len(planned))) as pool:
        failures = [f for f in pool.map(create, planned) if f]
    if failures:
        raise ProbeDeploymentError(
            "the API server refused probe pods (PodSecurity admission, quota, RBAC?):\n"
            + "\n".join(failures)
        )
    ready = wait_for_pods(
        core,
        namespace,
        [p.name for p in planned],
        timeout=timeouts.pods_ready,
        timeouts=timeouts,
    )
    deployed = []
    for probe in planned:
        pod = ready[probe.name]
        deployed.append(
            Probe(
                name=probe.name,
                role=probe.role,
                node=probe.node,
                agents=probe.agents,
                pod_ips=pod_ips(pod),
                host_ip=str(pod.status.host_ip or "") if pod.status else "",
            )
        )
    return ProbeMap(namespace=namespace, probes=tuple(deployed))


def restart_count(pod: client.V1Pod, container: str) -> int:
    """How often ``container`` of ``pod`` was restarted (0 when unknown)."""
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container:
            return int(cs.restart_count or 0)
    return 0


# --- one deployment per run, shared by xdist workers -----------------------------------------

STATE_DEPLOYING = "deploying"
STATE_READY = "ready"
STATE_FAILED = "failed"


@dataclass(frozen=True)
class RunInfo:
    """Identity of a run, made by the controller (or the only process) and handed to xdist
    workers through ``workerinput``. ``shared_dir`` holds the lock and the deployment state."""

    run_id: str
    namespace: str
    shared_dir: str

    @property
    def state_path(self) -> Path:
        return Path(self.shared_dir) / "deployment.json"

    @property
    def lock_path(self) -> Path:
        return Path(self.shared_dir) / "deployment.lock"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, str]) -> RunInfo:
        return cls(run_id=raw["run_id"], namespace=raw["namespace"], shared_dir=raw["shared_dir"])


@dataclass(frozen=True)
class DeploymentState:
    """What the deploying process recorded: status, the probe map, facts, or the error."""

    status: str | None = None
    error: str = ""
    probes: ProbeMap | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def touched_cluster(self) -> bool:
        """A namespace may exist: deployment started (whatever became of it)."""
        return self.status is not None


def read_state(run: RunInfo) -> DeploymentState:
    """The recorded deployment state (empty when no process deployed)."""
    try:
        raw = json.loads(run.state_path.read_text())
    except FileNotFoundError:
        return DeploymentState()
    probes = ProbeMap.from_json(raw["probes"]) if raw.get("probes") else None
    return DeploymentState(
        status=raw.get("status"),
        error=raw.get("error", ""),
        probes=probes,
        facts=raw.get("facts") or {},
    )


def write_state(run: RunInfo, state: DeploymentState) -> None:
    raw = {
        "status": state.status,
        "error": state.error,
        "probes": state.probes.to_json() if state.probes else None,
        "facts": dict(state.facts),
    }
    tmp = run.state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, sort_keys=True))
    tmp.replace(run.state_path)


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (shared by the run's processes, xdist workers too)."""
    # flock is released by the kernel if the holder dies, so a crashed worker cannot wedge
    # the others.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def deploy_once(
    run: RunInfo, deploy: Callable[[], tuple[ProbeMap, Mapping[str, Any]]]
) -> tuple[ProbeMap, Mapping[str, Any]]:
    """Deploy on the first call in the whole run (any process), reuse the result afterwards.

    A failed (or interrupted) deployment is not retried: every later caller gets the same
    `ProbeDeploymentError`, so each test needing probes errors with the real cause.
    """
    Path(run.shared_dir).mkdir(parents=True, exist_ok=True)
    with run_lock(run.lock_path):
        state = read_state(run)
        if state.status == STATE_READY and state.probes is not None:
            return state.probes, state.facts
        if state.status is not None:
            raise ProbeDeploymentError(
                state.error or "an earlier deployment attempt in this run died midway"
            )
        write_state(run, DeploymentState(status=STATE_DEPLOYING))
        try:
            probes, facts = deploy()
        except BaseException as exc:
            write_state(run, DeploymentState(status=STATE_FAILED, error=str(exc) or repr(exc)))
            raise
        write_state(run, DeploymentState(status=STATE_READY, probes=probes, facts=facts))
        return probes, facts


# --- end of run ------------------------------------------------------------------------------


def facts_from_state(state: DeploymentState) -> ClusterFacts | None:
    """The `ClusterFacts` the deploying process recorded (JSON lists back to tuples)."""
    raw = state.facts.get("cluster")
    if not isinstance(raw, Mapping):
        return None
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return ClusterFacts(**fields)
    except TypeError:
        return None


def run_properties(run: RunInfo, state: DeploymentState) -> list[tuple[str, str]]:
    """Run-wide JUnit properties: run id, namespace, deployment outcome, cluster facts."""
    properties = [
        ("netconform.run_id", run.run_id),
        ("netconform.namespace", run.namespace),
        ("netconform.deployment", state.status or "not started"),
    ]
    if state.error:
        properties.append(("netconform.deployment_error", state.error.splitlines()[0][:500]))
    facts = facts_from_state(state)
    if facts is not None:
        properties.extend(facts.junit_properties())
    return properties


def end_run(
    *,
    settings: Settings,
    run: RunInfo,
    state: DeploymentState,
    summary: dict[str, Any],
    reports_dir: Path,
    make_core: Callable[[], client.CoreV1Api] | None = None,
) -> list[str]:
    """Write the summary (``summary.json``), dump the run namespace (pod states, events) next to it and delete
    the namespace unless ``--keep-namespace``. Returns lines for the terminal summary.

    Runs in the controller (or the only process) whatever happened: failure, Ctrl-C, a
    crashed worker. Cleanup problems are reported, not raised, so the report still gets written.
    """
    from conformance.kit.cluster import make_api_client
    from conformance.kit.namespace import delete_namespace, dump_namespace

    lines: list[str] = []
    reports_dir.mkdir(parents=True, exist_ok=True)
    if state.touched_cluster:
        try:
            core = make_core() if make_core else client.CoreV1Api(make_api_client(settings))
            dump_path = reports_dir / f"{run.namespace}.txt"
            dump_path.write_text(dump_namespace(core, run.namespace, settings.timeouts) + "\n")
            lines.append(f"pod states and events of the run: {dump_path}")
            if settings.keep_namespace:
                lines.append(f"namespace {run.namespace} kept (--keep-namespace)")
            elif delete_namespace(core, run.namespace, settings.timeouts, wait=True):
                lines.append(f"namespace {run.namespace} deleted")
            else:
                lines.append(
                    f"namespace {run.namespace} still terminating after "
                    f"{settings.timeouts.namespace_delete:.0f}s; sweep later with --cleanup-stale"
                )
        except (ClusterError, ApiException, OSError) as exc:
            lines.append(
                f"cleanup of namespace {run.namespace} failed: {describe_api_error(exc)}; "
                "delete it by hand or run again with --cleanup-stale"
            )
    if state.status == STATE_FAILED:
        lines.append(
            f"probe deployment failed: {state.error.splitlines()[0] if state.error else '?'}"
        )
    summary["run"] = {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "deployment": state.status or "not started",
        "deployment_error": state.error or None,
    }
    lines.append(f"summary: {write_summary(reports_dir / 'summary.json', summary)}")
    return lines


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
# Generated from conformance/kit/probes.py (pod_spec); tests/unit/test_settings.py keeps it in
# sync. To run by hand: replace {node} with a node name, then
#   kubectl create namespace {namespace}
#   kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged
#   kubectl -n {namespace} create configmap {configmap} \\
#       --from-file={key}=conformance/probe_agent/agent.py
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
        key=AGENT_KEY,
        file=MANIFEST_FILES[role],
    )
    body: str = yaml.safe_dump(to_manifest(pod), sort_keys=False, default_flow_style=False)
    return header + body
