"""Settings and Timeouts, and the pure parts of the conformance kit around them: node
selection (from client model objects), run namespace and probe pod specs (serialized and
validated against the Kubernetes schema), the deployment hand-off between processes, the exec
client's stream handling, and failure text."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from tenacity import Retrying, stop_after_delay, wait_fixed

from conformance.kit import agent_client, cluster, namespace, probes
from conformance.kit.settings import (
    DEFAULT_PROBE_IMAGE,
    PullSecret,
    Settings,
    TaintToleration,
    Timeouts,
    check_pull_secrets,
    parse_image_pull_policy,
    parse_ip_family,
    parse_max_nodes,
    parse_node_selector,
    parse_probe_timeout,
    parse_pull_secret,
    parse_taint_toleration,
    resolve_kubeconfig,
)

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


# --- settings --------------------------------------------------------------------------------


def test_timeouts_frozen_and_scaled() -> None:
    timeouts = Timeouts.for_probe_timeout(10.0)
    assert timeouts.probe == 10.0
    assert timeouts.exec_overhead >= 40.0
    assert timeouts.exec_budget(3) == timeouts.exec_overhead + 3 * (10.0 + timeouts.capture_wait)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timeouts.probe = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().max_nodes = 3  # type: ignore[misc]


def test_every_timeout_is_documented() -> None:
    source = (ROOT / "conformance/kit/settings.py").read_text()
    for item in dataclasses.fields(Timeouts):
        assert re.search(rf"#: .*\n    {item.name}:", source), f"Timeouts.{item.name} undocumented"


def test_node_selector_parses_pairs() -> None:
    assert dict(parse_node_selector("")) == {}
    assert dict(parse_node_selector("a=b, kubernetes.io/os=linux,empty=")) == {
        "a": "b",
        "kubernetes.io/os": "linux",
        "empty": "",
    }


@pytest.mark.parametrize("text", ["a", "=b", "a=b c", "a/b/c=d", "-a=b", "a=b=c"])
def test_node_selector_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="--node-selector"):
        parse_node_selector(text)


def test_scalar_parsers() -> None:
    assert parse_max_nodes("4") == 4
    assert parse_probe_timeout("0.5") == 0.5
    assert parse_image_pull_policy("never") == "Never"
    assert parse_ip_family("DUAL") == "dual"
    for parser, bad in [
        (parse_max_nodes, "-1"),
        (parse_probe_timeout, "0"),
        (parse_probe_timeout, "301"),
        (parse_image_pull_policy, "sometimes"),
        (parse_ip_family, "ipx"),
    ]:
        with pytest.raises(pytest.UsageError):
            parser(bad)


def test_kubeconfig_resolution(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert resolve_kubeconfig("/opt/k", {"KUBECONFIG": "/env/k", "HOME": str(home)}) == "/opt/k"
    assert resolve_kubeconfig(None, {"KUBECONFIG": "/env/k", "HOME": str(home)}) == "/env/k"
    assert resolve_kubeconfig(None, {"HOME": str(home)}) is None  # in-cluster
    default = home / ".kube" / "config"
    default.parent.mkdir(parents=True)
    default.write_text("{}")
    assert resolve_kubeconfig(None, {"HOME": str(home)}) == str(default)


def test_settings_defaults() -> None:
    s = settings()
    assert s.probe_image == DEFAULT_PROBE_IMAGE
    assert ":" in s.probe_image
    assert not s.probe_image.endswith(":latest")
    assert s.image_pull_policy == "IfNotPresent"
    assert s.ip_family == "auto"


# --- node selection --------------------------------------------------------------------------


def make_node(
    name: str,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    taints: list[tuple[str, str]] | None = None,
    unschedulable: bool = False,
    pod_cidrs: tuple[str, ...] = (),
    addresses: tuple[tuple[str, str], ...] = (),
) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name, labels={"kubernetes.io/os": "linux", **(labels or {})}
        ),
        spec=client.V1NodeSpec(
            unschedulable=unschedulable,
            taints=[client.V1Taint(key=k, effect=e) for k, e in taints or []],
            pod_cidr=pod_cidrs[0] if pod_cidrs else None,
            pod_cidrs=list(pod_cidrs) or None,
        ),
        status=client.V1NodeStatus(
            conditions=[client.V1NodeCondition(type="Ready", status="True" if ready else "False")],
            addresses=[client.V1NodeAddress(type=t, address=a) for t, a in addresses],
        ),
    )


CP_TAINT = [("node-role.kubernetes.io/control-plane", "NoSchedule")]


def test_selection_filters_and_sorts() -> None:
    nodes = [
        make_node("node-c"),
        make_node("node-a"),
        make_node("cp", taints=CP_TAINT, labels={"node-role.kubernetes.io/control-plane": ""}),
        make_node("down", ready=False),
        make_node("cordoned", unschedulable=True),
        make_node("win", labels={"kubernetes.io/os": "windows"}),
        make_node("prefer", taints=[("x", "PreferNoSchedule")]),
    ]
    selection = cluster.select_nodes(nodes, settings())
    assert selection.names == ("node-a", "node-c", "prefer")
    assert "not Ready" in selection.excluded["down"]
    assert "cordoned" in selection.excluded["cordoned"]
    assert "windows" in selection.excluded["win"]
    assert "--include-control-plane" in selection.excluded["cp"]

    with_cp = cluster.select_nodes(nodes, settings(include_control_plane=True))
    assert with_cp.names == ("cp", "node-a", "node-c", "prefer")


def test_selection_by_label_and_cap() -> None:
    nodes = [make_node(f"n{i}", labels={"pool": "x" if i % 2 else "y"}) for i in range(6)]
    picked = cluster.select_nodes(
        nodes, settings(node_selector=parse_node_selector("pool=x"), max_nodes=2)
    )
    assert picked.names == ("n1", "n3")
    assert "beyond --max-nodes 2" in picked.excluded["n5"]
    assert "--node-selector pool=x" in picked.excluded["n0"]


def test_node_facts_helpers() -> None:
    node = make_node(
        "n1",
        pod_cidrs=("10.244.1.0/24", "fd00:1::/64"),
        addresses=(("Hostname", "n1"), ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.0.0.5")),
    )
    assert cluster.node_pod_cidrs(node) == ("10.244.1.0/24", "fd00:1::/64")
    assert cluster.node_ip_addresses(node) == ("10.0.0.5", "203.0.113.9")
    assert cluster.detect_ip_families([node]) == (4, 6)
    assert cluster.families_for("auto", ()) == (4,)
    assert cluster.families_for("dual", (4,)) == (4, 6)
    pod = client.V1Pod(
        spec=client.V1PodSpec(containers=[]),
        status=client.V1PodStatus(pod_ips=[client.V1PodIP(ip="fd00::5")], pod_ip="fd00::5"),
    )
    assert cluster.detect_ip_families([make_node("bare")], [pod]) == (6,)


# --- namespace -------------------------------------------------------------------------------


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=80))
def test_namespace_names_are_dns_labels(worker: str) -> None:
    run_id = namespace.new_run_id()
    name = namespace.namespace_name(run_id, worker.strip("-") or "gw0")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert name.startswith(f"netconform-{run_id}")


def test_namespace_names_differ_and_are_labelled() -> None:
    run_id = namespace.new_run_id()
    assert namespace.namespace_name(run_id) != namespace.namespace_name(run_id)
    manifest = probes.to_manifest(namespace.namespace_manifest("netconform-x-1", run_id))
    labels = manifest["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "k8s-netconform"
    assert labels["netconform/run"] == run_id
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert namespace.selector_for_run(run_id).endswith(f"netconform/run={run_id}")


# --- probe pods ------------------------------------------------------------------------------


def test_planned_probes_per_node_plus_constant() -> None:
    planned = probes.planned_probes(["n1", "n2", "n3"])
    assert len(planned) == 2 * 3 + 2
    roles = [(p.role, p.node) for p in planned]
    assert (probes.ROLE_PEER, "n1") in roles
    assert (probes.ROLE_SANDBOX, "n1") in roles
    assert len({p.name for p in planned}) == len(planned)


@pytest.mark.parametrize("role", probes.ROLES)
def test_pod_specs_serialize_and_validate(role: str) -> None:
    probe = next(p for p in probes.planned_probes(["node-1"]) if p.role == role)
    pod = probes.pod_spec(probe, "netconform-test", "run1", settings())
    manifest = probes.to_manifest(pod)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["nodeName"] == "node-1"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/name"] == "netconform-probe"
    assert spec.get("hostNetwork", False) is (role == probes.ROLE_HOSTPROBE)
    env_names = {"POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP"}
    ports = set()
    for container in spec["containers"]:
        assert container["command"][:3] == ["python3", "/netconform/agent.py", "serve"]
        probe_cmd = container["readinessProbe"]["exec"]["command"]
        assert probe_cmd[:3] == ["python3", "/netconform/agent.py", "ping"]
        assert {e["name"] for e in container["env"]} == env_names
        assert container["securityContext"]["capabilities"]["add"] == ["NET_RAW"]
        assert {"mountPath": "/netconform", "name": "agent", "readOnly": True} in container[
            "volumeMounts"
        ]
        ports.add(container["command"][container["command"].index("--tcp-port") + 1])
    assert len(ports) == len(spec["containers"])  # containers of one pod never share a port


def test_probe_pod_shares_volumes_at_different_paths() -> None:
    probe = probes.planned_probes(["n"])[0]
    spec = probes.to_manifest(probes.pod_spec(probe, "ns", "r", settings()))["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["memory"]["emptyDir"]["medium"] == "Memory"
    assert "medium" not in volumes["scratch"]["emptyDir"]
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        for c in spec["containers"]
    }
    assert mounts["a"]["scratch"] != mounts["b"]["scratch"]
    assert mounts["a"]["memory"] != mounts["b"]["memory"]
    assert spec["initContainers"][0]["volumeMounts"][0]["name"] == "scratch"


def test_settings_reach_the_pods() -> None:
    custom = settings(probe_image="registry.example/netshoot:1", image_pull_policy="Always")
    probe = probes.planned_probes(["n"])[1]
    pod = probes.to_manifest(probes.pod_spec(probe, "ns", "r", custom))
    assert pod["spec"]["containers"][0]["image"] == "registry.example/netshoot:1"
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"


@pytest.mark.parametrize(("role", "filename"), sorted(probes.MANIFEST_FILES.items()))
def test_manifests_match_the_specs(role: str, filename: str) -> None:
    path = ROOT / "manifests" / filename
    assert path.read_text() == probes.render_manifest(role), (
        f"{path} is stale: regenerate it from conformance.kit.probes.render_manifest"
    )
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), K8S_VERSION, strict=True)


def test_agent_configmap_carries_the_agent() -> None:
    cm = probes.agent_configmap("ns", "r")
    assert cm.data is not None
    assert cm.data["agent.py"].startswith("#!/usr/bin/env python3")
    kubernetes_validate.validate(probes.to_manifest(cm), K8S_VERSION, strict=True)


def pod_with(
    waiting: str | None = None, phase: str = "Pending", ready: bool = False
) -> client.V1Pod:
    state = client.V1ContainerState(
        waiting=client.V1ContainerStateWaiting(reason=waiting, message="details")
        if waiting
        else None,
        running=None if waiting else client.V1ContainerStateRunning(),
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="probe-n1"),
        spec=client.V1PodSpec(containers=[], node_name="n1"),
        status=client.V1PodStatus(
            phase=phase,
            conditions=[client.V1PodCondition(type="Ready", status="True" if ready else "False")],
            container_statuses=[
                client.V1ContainerStatus(
                    name="a", image="i", image_id="", ready=ready, restart_count=2, state=state
                )
            ],
        ),
    )


def test_pod_state_helpers() -> None:
    assert probes.pod_ready(pod_with(ready=True))
    assert not probes.pod_ready(pod_with())
    assert probes.restart_count(pod_with(), "a") == 2
    assert probes.restart_count(pod_with(), "zz") == 0
    assert probes.fatal_reason(pod_with("ImagePullBackOff")) is None  # may still recover
    assert "InvalidImageName" in (probes.fatal_reason(pod_with("InvalidImageName")) or "")
    assert "Failed" in (probes.fatal_reason(pod_with(phase="Failed")) or "")
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="e"),
        involved_object=client.V1ObjectReference(name="probe-n1", kind="Pod"),
        type="Warning",
        reason="Failed",
        message='Failed to pull image "nicolaka/netshoot:v0.13"',
    )
    text = probes.explain_not_ready(pod_with("ImagePullBackOff"), "probe-n1", [event])
    assert "ImagePullBackOff" in text
    assert "Failed to pull image" in text
    assert "node=n1" in text
    assert "never created" in probes.explain_not_ready(None, "probe-n2", [])


# --- the deployment hand-off between processes -----------------------------------------------


def sample_map() -> probes.ProbeMap:
    planned = probes.planned_probes(["n1", "n2"])
    return probes.ProbeMap(
        "ns",
        tuple(
            dataclasses.replace(p, pod_ips=("10.0.0.1", "fd00::1"), host_ip="192.0.2.1")
            for p in planned
        ),
    )


def test_probe_map_round_trip() -> None:
    original = sample_map()
    assert probes.ProbeMap.from_json(original.to_json()) == original
    assert original.get(probes.ROLE_PROBE, "n2").agent("b").tcp_port == 8082
    assert original.find(probes.ROLE_PEER, "n2") is None
    with pytest.raises(KeyError):
        original.get(probes.ROLE_SANDBOX, "n2")


def run_info(tmp_path: Path) -> probes.RunInfo:
    return probes.RunInfo(run_id="r1", namespace="netconform-r1-abc", shared_dir=str(tmp_path))


def test_deploy_once_shares_the_result(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    calls: list[int] = []

    def deploy() -> tuple[probes.ProbeMap, dict[str, Any]]:
        calls.append(1)
        return sample_map(), {"cluster": {"server_version": "v1"}}

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(probes.deploy_once(run, deploy)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert all(r[0] == sample_map() for r in results)
    state = probes.read_state(run)
    assert state.status == probes.STATE_READY
    assert state.touched_cluster


def test_failed_deployment_is_not_retried(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    assert not probes.read_state(run).touched_cluster

    def broken() -> tuple[probes.ProbeMap, dict[str, Any]]:
        raise probes.ProbeDeploymentError("probe-n1: ImagePullBackOff")

    with pytest.raises(probes.ProbeDeploymentError):
        probes.deploy_once(run, broken)
    with pytest.raises(probes.ProbeDeploymentError, match="ImagePullBackOff"):
        probes.deploy_once(run, lambda: (sample_map(), {}))
    state = probes.read_state(run)
    assert state.status == probes.STATE_FAILED
    assert state.touched_cluster
    properties = dict(probes.run_properties(run, state))
    assert properties["netconform.deployment"] == "failed"
    assert "ImagePullBackOff" in properties["netconform.deployment_error"]


def test_run_properties_carry_cluster_facts(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    facts = {
        "server_version": "v1.33.1",
        "node_count": 3,
        "nodes_tested": ["n1", "n2"],
        "pod_cidrs": ["n1=10.244.0.0/24"],
        "service_cidr": None,
        "ip_families": ["ipv4"],
        "probe_image": DEFAULT_PROBE_IMAGE,
    }
    state = probes.DeploymentState(status=probes.STATE_READY, facts={"cluster": facts})
    properties = dict(probes.run_properties(run, state))
    assert properties["netconform.namespace"] == run.namespace
    assert properties["netconform.server_version"] == "v1.33.1"
    assert properties["netconform.nodes_tested"] == "n1,n2"


# --- exec stream handling --------------------------------------------------------------------


class FakeStream:
    """Stands in for kubernetes.stream.ws_client.WSClient (the calls the client makes)."""

    def __init__(self, stdout: str, stderr: str = "", status: str = "", v5: bool = True) -> None:
        self.subprotocol = "v5.channel.k8s.io" if v5 else "v4.channel.k8s.io"
        self.chunks = {1: [stdout[: len(stdout) // 2], stdout[len(stdout) // 2 :]], 2: [stderr]}
        self.status = status or json.dumps({"status": "Success"})
        self.updates = 0
        self.stdin: list[str] = []
        self.closed_channels: list[int] = []
        self.open = True

    def is_open(self) -> bool:
        return self.open and self.updates < 2

    def update(self, timeout: float = 0) -> None:
        self.updates += 1

    def read_stdout(self, timeout: float = 0) -> str:
        return self.chunks[1].pop(0) if self.chunks[1] else ""

    def read_stderr(self, timeout: float = 0) -> str:
        return self.chunks[2].pop(0) if self.chunks[2] else ""

    def read_channel(self, channel: int, timeout: float = 0) -> str:
        return self.status

    def write_stdin(self, data: str) -> None:
        self.stdin.append(data)

    def close_channel(self, channel: int) -> None:
        self.closed_channels.append(channel)

    def close(self) -> None:
        self.open = False


def fake_client(monkeypatch: pytest.MonkeyPatch, streams: list[FakeStream]) -> Any:
    opened: list[list[str]] = []

    def fake_open(self: Any, pod: str, container: str, command: list[str], stdin: bool) -> Any:
        opened.append(command)
        return streams.pop(0)

    monkeypatch.setattr(agent_client.AgentClient, "_open", fake_open)
    agents = agent_client.AgentClient(client.CoreV1Api(client.ApiClient()), "ns", Timeouts())
    return agents, opened


def test_call_sends_json_and_closes_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeStream(json.dumps([{"ok": True, "op": "info", "pid": 7}]))
    agents, opened = fake_client(monkeypatch, [stream])
    answer = agents.call_one("probe-n1", "a", {"op": "info"})
    assert answer["pid"] == 7
    assert opened[0][:3] == ["python3", "/netconform/agent.py", "call"]
    assert "/tmp/netconform-agent-a.sock" in opened[0]
    assert json.loads(stream.stdin[0]) == [{"op": "info"}]
    assert stream.closed_channels == [0]


def test_call_without_v5_passes_the_payload_as_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeStream("", v5=False)
    second = FakeStream(json.dumps([{"ok": True, "op": "seen", "records": []}]))
    agents, opened = fake_client(monkeypatch, [first, second])
    agents.call_one("p", "b", {"op": "seen", "nonce": "x"})
    assert opened[1][:2] == ["/bin/sh", "-c"]
    assert json.loads(opened[1][4]) == [{"op": "seen", "nonce": "x"}]
    assert opened[1][5:8] == ["python3", "/netconform/agent.py", "call"]
    # the next call goes straight to the argument form
    third = FakeStream(json.dumps([{"ok": True, "op": "info"}]))
    agents2, opened2 = agents, opened
    monkeypatch.setattr(
        agent_client.AgentClient, "_open", lambda self, *a, **k: opened2.append(a[2]) or third
    )
    agents2.call_one("p", "b", {"op": "info"})
    assert opened2[-1][:2] == ["/bin/sh", "-c"]


def test_call_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = json.dumps(
        {
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }
    )
    agents, _ = fake_client(
        monkeypatch,
        [
            FakeStream("", stderr="agent call: no serve process answers\n", status=failed),
            FakeStream("not json"),
            FakeStream(json.dumps([{"ok": True}, {"ok": True}])),
        ],
    )
    with pytest.raises(agent_client.AgentExecError, match="exited 3") as exited:
        agents.call_one("p", "a", {"op": "info"})
    assert "no serve process answers" in str(exited.value)
    assert exited.value.pod == "p"
    assert exited.value.container == "a"
    with pytest.raises(agent_client.AgentProtocolError, match="no JSON"):
        agents.call_one("p", "a", {"op": "info"})
    with pytest.raises(agent_client.AgentProtocolError, match="2 responses for 1"):
        agents.call_one("p", "a", {"op": "info"})


def test_exec_status_parsing() -> None:
    assert agent_client.parse_exec_status('{"status": "Success"}') == (0, "")
    code, message = agent_client.parse_exec_status(
        '{"status": "Failure", "message": "exec: python3: not found"}'
    )
    assert code is None
    assert "not found" in message
    assert agent_client.parse_exec_status("")[0] is None


def test_address_helpers() -> None:
    assert agent_client.address_of_family(["10.1.0.5/24", "fd00::5/64"], 6) == "fd00::5"
    assert agent_client.address_of_family(["10.1.0.5"], 6) is None
    assert agent_client.normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert agent_client.normalize_ip("fe80::1%eth0") == "fe80::1"
    assert agent_client.normalize_ip("nonsense") is None


# --- failure text ----------------------------------------------------------------------------


def test_exchange_description_names_both_ends() -> None:
    exchange = agent_client.Exchange(
        proto="udp",
        source="probe-n1/a",
        destination="probe-n2/a",
        target="10.244.2.5:8081",
        attempts=3,
        client_response={"ok": False, "error": "timed out"},
        listener_peers=(),
        captured_sources=("10.0.0.1",),
    )
    text = exchange.describe()
    assert "udp probe-n1/a -> probe-n2/a at 10.244.2.5:8081: NOT reached after 3" in text
    assert "timed out" in text
    assert "10.0.0.1" in text


def test_pod_description_for_dumps() -> None:
    text = namespace.describe_pod(pod_with("ErrImagePull"))
    assert text.startswith("pod probe-n1 node=n1 phase=Pending")
    assert "container a: waiting (ErrImagePull: details)" in text
    assert "restarts=2" in text


# --- the client's requests against the real agent (local processes, no cluster) --------------


class LocalAgents(agent_client.AgentClient):
    """Runs the exec'd command locally: ``python3 /netconform/agent.py`` -> this agent file."""

    def exec(
        self,
        pod: str,
        container: str,
        command: Any,
        *,
        timeout: float,
        stdin: str | None = None,
    ) -> agent_client.ExecResult:
        argv = [sys.executable, str(AGENT), *list(command)[2:]]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        return agent_client.ExecResult(done.stdout, done.stderr, done.returncode)


AGENT = ROOT / "conformance" / "probe_agent" / "agent.py"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_local_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Agents "a" and "b" serving on this machine, as two containers of one pod would."""
    monkeypatch.setattr(agent_client, "agent_socket", lambda c: str(tmp_path / f"{c}.sock"))
    ports = {}
    processes = []
    for container in ("a", "b"):
        tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        ports[container] = tcp
        ports[f"{container}-udp"] = udp
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(AGENT),
                    "serve",
                    "--tcp-port",
                    str(tcp),
                    "--udp-port",
                    str(udp),
                    "--socket",
                    str(tmp_path / f"{container}.sock"),
                ],
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for attempt in Retrying(stop=stop_after_delay(20), wait=wait_fixed(0.1), reraise=True):
            with attempt:
                for container in ("a", "b"):
                    assert (tmp_path / f"{container}.sock").exists(), "agent not serving yet"
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_exchange_and_checks_against_the_real_agent(two_local_agents: dict[str, int]) -> None:
    agents = LocalAgents(client.CoreV1Api(client.ApiClient()), "ns", Timeouts(probe=2.0))
    for proto, port in (("tcp", two_local_agents["b"]), ("udp", two_local_agents["b-udp"])):
        result = agent_client.exchange(
            agents,
            proto=proto,
            source=("pod", "a"),
            destination=("pod", "b"),
            host="127.0.0.1",
            port=port,
            nonce=f"nc-unit-{proto}",
            capture=False,
        )
        assert result.reached, result.describe()
        assert result.peer_seen == "127.0.0.1"
        assert result.listener_peers == ("127.0.0.1",)
    taken = agents.call_one(
        "pod", "b", {"op": "try_bind", "proto": "tcp", "host": "", "port": two_local_agents["a"]}
    )
    assert taken["bound"] is False
    assert taken["errno"] == "EADDRINUSE"
    info, addresses = agents.call("pod", "a", [{"op": "info"}, {"op": "addresses"}])
    assert isinstance(info["pid"], int)
    assert any("127.0.0.1/8" in i["addresses"] for i in addresses["interfaces"])


# --- taints, tolerations, pull secrets, images (issue 8) -------------------------------------


def test_taint_toleration_parses() -> None:
    assert parse_taint_toleration("dedicated") == TaintToleration("dedicated")
    assert parse_taint_toleration("example.com/gpu:noexecute") == TaintToleration(
        "example.com/gpu", "NoExecute"
    )
    assert str(parse_taint_toleration("a:NoSchedule")) == "a:NoSchedule"
    tol = TaintToleration("a")
    assert tol.tolerates("a", "NoExecute")
    assert tol.tolerates("a", "NoSchedule")
    assert not tol.tolerates("b", "NoSchedule")
    assert not TaintToleration("a", "NoSchedule").tolerates("a", "NoExecute")


@pytest.mark.parametrize("text", ["", ":NoSchedule", "a:Sometimes", "a b", "a/b/c"])
def test_taint_toleration_rejects(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="--tolerate-taint"):
        parse_taint_toleration(text)


def test_pull_secrets_parse_and_clash() -> None:
    assert parse_pull_secret("regcred") == PullSecret("regcred", "default")
    assert parse_pull_secret("infra/regcred") == PullSecret("regcred", "infra")
    for bad in ("", "Reg_Cred", "a/b/c", "/x", "ns/"):
        with pytest.raises(pytest.UsageError, match="--image-pull-secret"):
            parse_pull_secret(bad)
    same = parse_pull_secret("regcred")
    assert check_pull_secrets([same, same, parse_pull_secret("infra/other")]) == (
        same,
        PullSecret("other", "infra"),
    )
    with pytest.raises(pytest.UsageError, match="both be copied as 'regcred'"):
        check_pull_secrets([same, parse_pull_secret("infra/regcred")])


def test_control_plane_option_adds_its_tolerations() -> None:
    assert settings().tolerations == ()
    cp = settings(include_control_plane=True).tolerations
    assert {t.key for t in cp} == {
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    }
    assert all(t.effect is None for t in cp)
    both = settings(include_control_plane=True, tolerate_taints=(TaintToleration("gpu"),))
    assert both.tolerations[0] == TaintToleration("gpu")
    assert len(both.tolerations) == 3


def test_every_exclusion_has_a_reason_and_tolerations_include() -> None:
    win_by_info = make_node("win-info")
    win_by_info.metadata.labels = {}
    win_by_info.status.node_info = client.V1NodeSystemInfo(
        architecture="amd64",
        boot_id="b",
        container_runtime_version="containerd://1.7",
        kernel_version="10.0",
        kube_proxy_version="v1.33.0",
        kubelet_version="v1.33.0",
        machine_id="m",
        operating_system="windows",
        os_image="Windows Server 2022",
        system_uuid="u",
    )
    nodes = [
        make_node("ok"),
        win_by_info,
        make_node("down-cordoned", ready=False, unschedulable=True),
        make_node("gpu", taints=[("example.com/gpu", "NoSchedule")]),
        make_node("evict", taints=[("example.com/drain", "NoExecute")]),
        make_node(
            "cp",
            taints=[*CP_TAINT, ("example.com/gpu", "NoSchedule")],
            labels={"node-role.kubernetes.io/control-plane": ""},
        ),
        make_node("soft", taints=[("x", "PreferNoSchedule")]),
    ]
    plain = cluster.select_nodes(nodes, settings())
    assert plain.names == ("ok", "soft")
    assert set(plain.excluded) == {"win-info", "down-cordoned", "gpu", "evict", "cp"}
    assert "windows" in plain.excluded["win-info"]
    assert plain.excluded["down-cordoned"] == "not Ready"  # the first reason wins
    assert "--tolerate-taint example.com/gpu:NoSchedule" in plain.excluded["gpu"]
    assert "--tolerate-taint example.com/drain:NoExecute" in plain.excluded["evict"]

    gpu = settings(tolerate_taints=(parse_taint_toleration("example.com/gpu"),))
    assert cluster.select_nodes(nodes, gpu).names == ("gpu", "ok", "soft")
    # Control-plane tolerations alone do not cover the node's second taint.
    cp_only = cluster.select_nodes(nodes, settings(include_control_plane=True))
    assert "cp" not in cp_only.names
    assert "example.com/gpu:NoSchedule" in cp_only.excluded["cp"]
    assert "node-role" not in cp_only.excluded["cp"]
    both = settings(include_control_plane=True, tolerate_taints=gpu.tolerate_taints)
    assert cluster.select_nodes(nodes, both).names == ("cp", "gpu", "ok", "soft")
    wrong_effect = settings(
        tolerate_taints=(parse_taint_toleration("example.com/drain:NoSchedule"),)
    )
    assert "evict" in cluster.select_nodes(nodes, wrong_effect).excluded


@pytest.mark.parametrize("role", probes.ROLES)
def test_probe_pods_carry_exactly_the_tolerations_and_pull_secrets(role: str) -> None:
    probe = next(p for p in probes.planned_probes(["node-1"]) if p.role == role)
    plain = probes.to_manifest(probes.pod_spec(probe, "ns", "r", settings()))["spec"]
    assert "tolerations" not in plain  # nothing tolerated unless asked
    assert "imagePullSecrets" not in plain
    custom = settings(
        include_control_plane=True,
        tolerate_taints=(parse_taint_toleration("example.com/gpu:NoExecute"),),
        image_pull_secrets=(parse_pull_secret("regcred"), parse_pull_secret("infra/mirror")),
    )
    manifest = probes.to_manifest(probes.pod_spec(probe, "ns", "r", custom))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["tolerations"] == [
        {"effect": "NoExecute", "key": "example.com/gpu", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/master", "operator": "Exists"},
    ]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_probes_pin_the_node_object_name_never_a_hostname() -> None:
    # Kubelets may report a hostname (label, address) that differs from the Node's name.
    node = make_node(
        "ip-10-0-0-5.internal",
        labels={"kubernetes.io/hostname": "worker-a"},
        addresses=(("Hostname", "worker-a"), ("InternalIP", "10.0.0.5")),
    )
    selection = cluster.select_nodes([node], settings())
    assert selection.names == ("ip-10-0-0-5.internal",)
    for probe in probes.planned_probes(selection.names):
        spec = probes.to_manifest(probes.pod_spec(probe, "ns", "r", settings()))["spec"]
        assert spec["nodeName"] == "ip-10-0-0-5.internal"
        assert "nodeSelector" not in spec
        assert "affinity" not in spec
        assert "worker-a" not in json.dumps(spec)
    assert cluster.node_ip_addresses(node) == ("10.0.0.5",)


def test_images_to_pull_lists_every_container_image() -> None:
    assert probes.images_to_pull(settings()) == (DEFAULT_PROBE_IMAGE,)
    mirrored = settings(probe_image="registry.example/netshoot:v0.13")
    assert probes.images_to_pull(mirrored) == ("registry.example/netshoot:v0.13",)
    every = {
        c["image"]
        for role in probes.ROLES
        for c in (lambda spec: spec["containers"] + spec.get("initContainers", []))(
            probes.to_manifest(
                probes.pod_spec(
                    next(p for p in probes.planned_probes(["n"]) if p.role == role),
                    "ns",
                    "r",
                    mirrored,
                )
            )["spec"]
        )
    }
    assert every == set(probes.images_to_pull(mirrored))


class _SecretsCore:
    """The two Secret calls of a CoreV1Api, in memory."""

    def __init__(self, secrets: dict[tuple[str, str], client.V1Secret]) -> None:
        self.secrets = secrets
        self.created: list[client.V1Secret] = []

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> client.V1Secret:
        if (namespace, name) not in self.secrets:
            raise client.ApiException(status=404, reason="Not Found")
        return self.secrets[(namespace, name)]

    def create_namespaced_secret(
        self, namespace: str, body: client.V1Secret, **_: Any
    ) -> client.V1Secret:
        self.created.append(body)
        return body


def test_pull_secrets_are_copied_into_the_run_namespace() -> None:
    source = client.V1Secret(
        metadata=client.V1ObjectMeta(name="regcred", namespace="infra", resource_version="7"),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": "e30="},
    )
    core = _SecretsCore({("infra", "regcred"): source})
    custom = settings(image_pull_secrets=(parse_pull_secret("infra/regcred"),))
    probes.copy_pull_secrets(core, "netconform-x", "run1", custom)  # type: ignore[arg-type]
    (copy,) = core.created
    assert copy.metadata.namespace == "netconform-x"
    assert copy.metadata.name == "regcred"
    assert copy.metadata.resource_version is None
    assert copy.metadata.labels["netconform/run"] == "run1"
    assert (copy.type, copy.data) == (source.type, source.data)
    kubernetes_validate.validate(probes.to_manifest(copy), K8S_VERSION, strict=True)

    missing = settings(image_pull_secrets=(parse_pull_secret("absent"),))
    with pytest.raises(probes.ProbeDeploymentError, match="default/absent: HTTP 404"):
        probes.copy_pull_secrets(core, "netconform-x", "run1", missing)  # type: ignore[arg-type]


def test_discovery_round_trips_with_its_exclusions() -> None:
    found = cluster.Discovery(
        nodes=("a", "b"), excluded={"z": "not Ready", "c": "cordoned"}, families=(4, 6)
    )
    again = cluster.Discovery.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again == found
    assert again.exclusion_lines() == ["node c left out: cordoned", "node z left out: not Ready"]
    failed = cluster.Discovery(error="cannot read the cluster: x")
    assert cluster.Discovery.from_dict(failed.to_dict()).error == failed.error
