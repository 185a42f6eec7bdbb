"""`conformance.kit.probes.podspecs`: the probe pod objects (serialized and validated against the
Kubernetes schema), their shared volumes, the tolerations and pull secrets the options allow,
the images a run pulls, the agent's ConfigMap, and ``manifests/`` kept equal to the specs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kube_objects import make_node
from polling import eventually

from conformance.kit.base.settings import (
    DEFAULT_PROBE_IMAGE,
    Settings,
    parse_pull_secret,
    parse_taint_toleration,
)
from conformance.kit.cluster.nodes import select_nodes
from conformance.kit.probes import layout, podspecs
from conformance.kit.probes import model as probes
from conformance.probe_agent import AGENT_DIRECTORY

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


def probe_of(role: str, node: str = "node-1") -> probes.Probe:
    return next(p for p in probes.planned_probes([node]) if p.role == role)


def spec_of(probe: probes.Probe, custom: Settings | None = None) -> dict[str, Any]:
    pod = podspecs.pod_spec(probe, "ns", "r", custom or settings())
    spec: dict[str, Any] = podspecs.to_manifest(pod)["spec"]
    return spec


@pytest.mark.parametrize("role", probes.ROLES)
def test_pod_specs_serialize_and_validate(role: str) -> None:
    pod = podspecs.pod_spec(probe_of(role), "netconform-test", "run1", settings())
    manifest = podspecs.to_manifest(pod)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["nodeName"] == "node-1"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/name"] == "netconform-probe"
    assert spec.get("hostNetwork", False) is (role == probes.ROLE_HOSTPROBE)
    env_names = {"POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP"}
    ports = set()
    for container in spec["containers"]:
        assert container["command"][:3] == ["python3", "/netconform/agent.py", "serve"]
        startup = container["startupProbe"]
        assert startup["exec"]["command"][:3] == ["python3", "/netconform/client.py", "ping"]
        assert startup["periodSeconds"] == 1  # a young kubelet's start jitter: at most 1 s
        # Only the flipped Service backend (the first node's peer) is probed for readiness.
        flipped = role == probes.ROLE_PEER
        assert ("readinessProbe" in container) is flipped
        assert {e["name"] for e in container["env"]} == env_names
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"mountPath": "/netconform", "name": "agent", "readOnly": True} in container[
            "volumeMounts"
        ]
        ports.add(container["command"][container["command"].index("--tcp-port") + 1])
    assert len(ports) == len(spec["containers"])  # containers of one pod never share a port


def test_each_container_has_its_own_agent_socket() -> None:
    spec = spec_of(probe_of(probes.ROLE_PROBE))
    sockets = [c["command"][c["command"].index("--socket") + 1] for c in spec["containers"]]
    assert sockets == [layout.agent_socket("a"), layout.agent_socket("b")]
    assert len(set(sockets)) == 2


def test_probe_pod_shares_volumes_at_different_paths() -> None:
    spec = spec_of(probe_of(probes.ROLE_PROBE))
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
    container = spec_of(probe_of(probes.ROLE_HOSTPROBE), custom)["containers"][0]
    assert container["image"] == "registry.example/netshoot:1"
    assert container["imagePullPolicy"] == "Always"


@pytest.mark.parametrize("role", probes.ROLES)
def test_probe_pods_carry_exactly_the_tolerations_and_pull_secrets(role: str) -> None:
    plain = spec_of(probe_of(role))
    assert "tolerations" not in plain  # nothing tolerated unless asked
    assert "imagePullSecrets" not in plain
    custom = settings(
        include_control_plane=True,
        tolerate_taints=(parse_taint_toleration("example.com/gpu:NoExecute"),),
        image_pull_secrets=(parse_pull_secret("regcred"), parse_pull_secret("infra/mirror")),
    )
    manifest = podspecs.to_manifest(podspecs.pod_spec(probe_of(role), "ns", "r", custom))
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
    selection = select_nodes([node], settings())
    for probe in probes.planned_probes(selection.names):
        spec = spec_of(probe)
        assert spec["nodeName"] == "ip-10-0-0-5.internal"
        assert "nodeSelector" not in spec
        assert "affinity" not in spec
        assert "worker-a" not in json.dumps(spec)


def test_images_to_pull_lists_every_container_image() -> None:
    assert podspecs.images_to_pull(settings()) == (DEFAULT_PROBE_IMAGE,)
    mirrored = settings(probe_image="registry.example/netshoot:v0.13")
    assert podspecs.images_to_pull(mirrored) == ("registry.example/netshoot:v0.13",)
    every = {
        container["image"]
        for role in probes.ROLES
        for spec in [spec_of(probe_of(role, "n"), mirrored)]
        for container in spec["containers"] + spec.get("initContainers", [])
    }
    assert every == set(podspecs.images_to_pull(mirrored))


def test_unknown_role_is_refused() -> None:
    stranger = probes.Probe("x-n", "stranger", "n", probe_of(probes.ROLE_PEER).containers)
    with pytest.raises(ValueError, match="unknown probe role 'stranger'"):
        podspecs.pod_spec(stranger, "ns", "r", settings())


def test_agent_configmap_carries_the_agent() -> None:
    cm = podspecs.agent_configmap("ns", "r")
    assert cm.data is not None
    shipped = {path.name: path.read_text() for path in AGENT_DIRECTORY.glob("*.py")}
    # `kubectl create configmap --from-file=conformance/probe_agent/` (manifests/) makes the same.
    assert cm.data == shipped
    assert {"agent.py", "client.py", "protocol.py", "serve.py"} <= set(cm.data)
    assert cm.data["agent.py"].startswith("#!/usr/bin/env python3")
    # A ConfigMap holds at most 1 MiB; leave the agent room to grow, but not unnoticed.
    size = sum(len(key) + len(text.encode()) for key, text in cm.data.items())
    assert size < 512 << 10, f"the agent's ConfigMap holds {size} bytes"
    kubernetes_validate.validate(podspecs.to_manifest(cm), K8S_VERSION, strict=True)


def test_agent_configmap_runs_from_its_mount(tmp_path: Path) -> None:
    """``python3 <mount>/agent.py serve`` in a directory holding exactly the ConfigMap's files
    (isolated: no repository, no site path, not even the script's directory on sys.path)
    serves, and the client beside it calls it."""
    cm = podspecs.agent_configmap("ns", "r")
    assert cm.data is not None
    mount = tmp_path / "netconform"
    mount.mkdir()
    for key, text in cm.data.items():
        (mount / key).write_text(text)
    control = tmp_path / "agent.sock"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    agent = [python, "-I", str(mount / layout.AGENT_KEY), "serve", "--socket", str(control)]
    client = [python, "-I", str(mount / layout.CLIENT_KEY)]
    with (tmp_path / "agent.log").open("wb") as log:
        serve = subprocess.Popen(
            [*agent, "--tcp-port", "0", "--udp-port", "0"], stderr=log, cwd=tmp_path
        )
    try:

        def answers() -> bool:
            assert serve.poll() is None, (tmp_path / "agent.log").read_text()
            ping = [*client, "ping", "--socket", str(control)]
            return subprocess.run(ping, timeout=20, check=False).returncode == 0

        assert eventually(answers, 20), (tmp_path / "agent.log").read_text()
        batch = [{"op": "info"}, {"op": "no_such_op"}]
        done = subprocess.run(
            [*client, "call", "--socket", str(control)],
            input=json.dumps(batch),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        info, unknown = json.loads(done.stdout)
        assert info["ok"], info
        assert info["ports"]["tcp"] > 0, info
        assert not unknown["ok"], unknown
        assert "unknown op" in unknown["error"], unknown
    finally:
        serve.terminate()
        assert serve.wait(timeout=10) == 0, (tmp_path / "agent.log").read_text()


@pytest.mark.parametrize(("role", "filename"), sorted(podspecs.MANIFEST_FILES.items()))
def test_manifests_match_the_specs(role: str, filename: str) -> None:
    path = ROOT / "manifests" / filename
    assert path.read_text() == podspecs.render_manifest(role), (
        f"{path} is stale: regenerate it from conformance.kit.probes.podspecs.render_manifest"
    )
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), K8S_VERSION, strict=True)
