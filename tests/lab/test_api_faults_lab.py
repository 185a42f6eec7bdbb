"""One end-to-end smoke per family of API faults on a real lab (root): started with
`netlab up --api-fault`, switched at run time with `netlab api-faults --set`, observed through
the official client against real pods (runc containers)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
import websocket
from kube_access import kube_api, pod_exec
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from lab_names import leftovers, new_lab_name
from netlab_commands import booted_lab, netlab
from polling import until

pytestmark = pytest.mark.needs_lab

READY_TIMEOUT = 60


@dataclass
class FaultyLab:
    name: str
    kubeconfig: Path
    core: Any  # CoreV1Api

    def switch(self, *specs: str) -> None:
        """`netlab api-faults --name LAB --set ...` (``--clear`` without specs); retried while
        a restart fault has the API down."""

        def attempt() -> bool:
            args = [f"--set={spec}" for spec in specs] or ["--clear"]
            return netlab("api-faults", "--name", self.name, *args).returncode == 0

        until(attempt, 15, f"API faults switched to {list(specs)}")

    def namespace(self) -> str:
        """A namespace whose `default` ServiceAccount exists (the e2e framework's wait)."""
        name = f"f-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        until(lambda: self.core.list_namespaced_service_account(name).items, 10, "default SA")
        return name

    def ready_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None) -> None:
        body = {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "main", "image": "busybox:1.36", "command": ["sleep", "600"]}
                ],
            },
        }
        self.core.create_namespaced_pod(namespace, body)

        def ready() -> bool:
            pod = self.core.read_namespaced_pod(name, namespace)
            return any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )

        until(ready, READY_TIMEOUT, f"pod {namespace}/{name} Ready")

    def refused(self) -> bool:
        host, port = self.core.api_client.configuration.host.removeprefix("https://").split(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False


@pytest.fixture(scope="module")
def lab() -> Iterator[FaultyLab]:
    name = new_lab_name()
    with (
        booted_lab(name, "--nodes", "2", "--api-fault", "sa-delay=1") as kubeconfig,
        kube_api(kubeconfig, retries=0) as api,
    ):
        yield FaultyLab(name, kubeconfig, client.CoreV1Api(api))
    assert leftovers(name) == []


@pytest.fixture
def healthy(lab: FaultyLab) -> Iterator[FaultyLab]:
    """The lab, back to its start-up API faults after the test."""
    yield lab
    lab.switch("sa-delay=1")


def test_serviceaccount_lag(lab: FaultyLab) -> None:
    name = f"f-{uuid.uuid4().hex[:8]}"
    lab.core.create_namespace({"metadata": {"name": name}})
    with pytest.raises(ApiException) as refused:
        lab.core.create_namespaced_pod(
            name,
            {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "m", "image": "x"}]}},
        )
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        f'pods "web" is forbidden: error looking up service account {name}/default: '
        'serviceaccount "default" not found'
    )
    started = time.monotonic()
    until(lambda: lab.core.list_namespaced_service_account(name).items, 10, "default SA")
    print(f"default ServiceAccount {time.monotonic() - started:.2f} s after the refusal")
    lab.ready_pod(name, "web")


def test_throttling_server_errors_and_slow_answers(healthy: FaultyLab) -> None:
    healthy.switch("throttle=0.3", "server-error=0.2", "slow=0.3:0.2", "seed=1")
    codes: dict[int, int] = {}
    for _ in range(40):
        try:
            healthy.core.list_namespace()
            code = 200
        except ApiException as error:
            code = error.status
        codes[code] = codes.get(code, 0) + 1
    print(f"40 lists answered: {dict(sorted(codes.items()))}")
    assert set(codes) <= {200, 429, 500, 503}
    assert codes.get(429, 0) > 0
    assert codes.get(500, 0) + codes.get(503, 0) > 0
    assert codes.get(200, 0) > 0


def test_cut_streams(healthy: FaultyLab) -> None:
    namespace = healthy.namespace()
    healthy.ready_pod(namespace, "web")
    healthy.switch("sa-delay=1", "cut-streams=1", "seed=2")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in watch.Watch().stream(  # type: ignore[no-untyped-call]
            healthy.core.list_namespace, timeout_seconds=30
        ):
            pass
    command = ["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x"]
    resp = pod_exec(healthy.core, "web", namespace, command, preload=False)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        resp.run_forever(timeout=20)
    assert len(resp.read_stdout()) < 10000
    assert resp.read_channel(3) == ""


def test_a_probe_pod_is_evicted_mid_run(healthy: FaultyLab) -> None:
    namespace = healthy.namespace()
    healthy.switch("sa-delay=1", "evict=app=probe@2s")
    for name in ("a", "b"):
        healthy.ready_pod(namespace, name, {"app": "probe"})

    def disrupted() -> list[str]:
        return [
            pod.metadata.name
            for pod in healthy.core.list_namespaced_pod(namespace).items
            if any(c.type == "DisruptionTarget" for c in pod.status.conditions or [])
        ]

    victims = until(disrupted, 20, "a probe pod evicted")
    assert len(victims) == 1
    until(lambda: len(healthy.core.list_namespaced_pod(namespace).items) == 1, 30, "it gone")


def test_api_server_restart(healthy: FaultyLab) -> None:
    namespace = healthy.namespace()
    healthy.core.create_namespaced_config_map(namespace, {"metadata": {"name": "kept"}})
    before = int(healthy.core.list_namespaced_config_map(namespace).metadata.resource_version)
    healthy.switch("sa-delay=1", "restart=2s:2s")
    until(healthy.refused, 10, "the API down")
    until(lambda: not healthy.refused(), 10, "the API back")
    healthy.switch("sa-delay=1")
    after = healthy.core.create_namespaced_config_map(namespace, {"metadata": {"name": "after"}})
    assert int(after.metadata.resource_version) > before  # resourceVersions go on
    listed = healthy.core.list_namespaced_config_map(namespace)
    # kube-root-ca.crt: published in every namespace, as kube-controller-manager does.
    assert [cm.metadata.name for cm in listed.items] == ["after", "kept", "kube-root-ca.crt"]


def test_rbac_denials(healthy: FaultyLab) -> None:
    healthy.switch("sa-delay=1", "forbid=list:nodes")
    with pytest.raises(ApiException) as denied:
        healthy.core.list_node()
    assert denied.value.status == 403
    assert json.loads(denied.value.body)["message"] == (
        'nodes is forbidden: User "netlab-user" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )


def test_pre_1_30_exec_and_the_argv_limit(healthy: FaultyLab) -> None:
    namespace = healthy.namespace()
    healthy.ready_pod(namespace, "web")
    healthy.switch("sa-delay=1", "exec-v4-only")
    for length, starts in ((131071, True), (131072, False)):
        command = ["python3", "-c", "import sys; print(len(sys.argv[1]))", "x" * length]
        resp = pod_exec(healthy.core, "web", namespace, command, preload=False)
        assert resp.subprotocol == "v4.channel.k8s.io"
        resp.run_forever(timeout=30)
        status = json.loads(resp.read_channel(3))
        if starts:
            assert resp.read_stdout() == f"{length}\n"
            assert status["status"] == "Success"
        else:
            assert resp.read_stdout() == ""
            assert status["reason"] == "InternalError"
            assert "argument list too long" in status["message"]
