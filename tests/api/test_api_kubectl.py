"""The server through kubectl (a subprocess using the kubeconfig the server writes)."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
import yaml
from live_api import KUBECTL, LiveServer, kubectl

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


POD_YAML = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: demo}}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "3600"]
"""


def test_kubeconfig_file(live: LiveServer) -> None:
    assert stat.S_IMODE(live.kubeconfig.stat().st_mode) == 0o600
    config = yaml.safe_load(live.kubeconfig.read_text())
    assert config["current-context"] == "netlab-test"
    assert config["clusters"][0]["name"] == "netlab-test"
    assert config["clusters"][0]["cluster"]["server"] == live.server.url
    assert config["users"][0]["user"]["token"] == live.server.token


def test_get_nodes_wide(live: LiveServer) -> None:
    lines = kubectl(live, "get", "nodes", "-o", "wide").stdout.splitlines()
    assert lines[0].split()[:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    assert lines[0].rstrip().endswith("CONTAINER-RUNTIME")
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["node-1", "node-2", "node-3"]
    assert all(r[1] == "Ready" for r in rows)
    assert rows[2][2] == "infra"
    assert rows[0][5] == "172.18.0.2"


def test_pod_workflow(live: LiveServer, tmp_path: Path) -> None:
    ns = f"k-{uuid.uuid4().hex[:6]}"
    kubectl(live, "create", "namespace", ns)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(POD_YAML.format(name="demo"))
    assert "pod/demo created" in kubectl(live, "create", "-n", ns, "-f", str(manifest)).stdout
    kubectl(live, "wait", "-n", ns, "--for=condition=Ready", "pod/demo", "--timeout=10s")
    wide = kubectl(live, "get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:3] == ["NAMESPACE", "NAME", "READY"]
    assert "NOMINATED NODE" in wide[0]
    assert "READINESS GATES" in wide[0]
    row = next(line.split() for line in wide if line.startswith(ns))
    assert row[1:4] == ["demo", "1/1", "Running"]
    described = kubectl(live, "describe", "pod", "-n", ns, "demo").stdout
    assert "Status:           Running" in described
    assert "Successfully assigned" in described
    assert "default-scheduler" in described
    exec_ = kubectl(
        live,
        "exec",
        "-n",
        ns,
        "demo",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
        check=False,
    )
    assert exec_.returncode == 5
    assert exec_.stdout == "out\n"
    assert "err" in exec_.stderr
    piped = kubectl(live, "exec", "-i", "-n", ns, "demo", "--", "cat", stdin="through stdin\n")
    assert piped.stdout == "through stdin\n"
    assert kubectl(live, "logs", "-n", ns, "demo", "--tail=1").stdout == "main line 5\n"
    kubectl(live, "label", "-n", ns, "pod", "demo", "tier=web")
    assert "demo" in kubectl(live, "get", "pods", "-n", ns, "-l", "tier=web", "-o", "name").stdout
    assert 'pod "demo" deleted' in kubectl(live, "delete", "-n", ns, "pod", "demo").stdout
    assert "No resources found" in kubectl(live, "get", "pods", "-n", ns).stderr
    kubectl(live, "delete", "namespace", ns)


def test_create_strict_validation(live: LiveServer, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(POD_YAML.format(name="bad") + "    bogus: 1\n")
    result = kubectl(live, "create", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "spec.containers[0].bogus"' in result.stderr
    assert kubectl(live, "get", "pod", "bad", check=False).returncode == 1  # nothing stored


def test_get_services(live: LiveServer) -> None:
    lines = kubectl(live, "get", "svc", "-A", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
    ]
    rows = [line.split() for line in lines[1:]]
    assert ["default", "kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"] in [
        row[:6] for row in rows
    ]


def test_get_pods_in_chunks(live: LiveServer) -> None:
    ns = f"c-{uuid.uuid4().hex[:6]}"
    kubectl(live, "create", "namespace", ns)
    try:
        for i in range(5):
            kubectl(live, "create", "-n", ns, "-f", "-", stdin=POD_YAML.format(name=f"p-{i}"))
        result = kubectl(live, "get", "pods", "-n", ns, "--chunk-size=2", "-o", "name", "-v=6")
        assert result.stdout.split() == [f"pod/p-{i}" for i in range(5)]
        requests = [
            line for line in result.stderr.splitlines() if f"/namespaces/{ns}/pods?" in line
        ]
        assert len(requests) == 3, requests  # 2 + 2 + 1
        assert all("limit=2" in line for line in requests), requests
        assert sum("continue=" in line for line in requests) == 2, requests
        table = kubectl(live, "get", "pods", "-n", ns, "--chunk-size=3").stdout.splitlines()
        assert [line.split()[0] for line in table[1:]] == [f"p-{i}" for i in range(5)]
        assert table[0].split()[:3] == ["NAME", "READY", "STATUS"]
    finally:
        kubectl(live, "delete", "namespace", ns, "--wait=false")
