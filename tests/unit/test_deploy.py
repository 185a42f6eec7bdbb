"""`conformance.kit.probes.deploy` without a cluster: reading pod states (Ready, restarts, causes that
will not recover), explaining a probe that never came up, waiting on pods, copying pull
secrets, and `deploy_once`: one deployment per run, shared by every process, never retried."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kube_objects import pod_with
from kubernetes import client
from report_runs import DEPLOYED_FACTS

from conformance.kit.base.errors import CouldNotTest, ProbeDeploymentError
from conformance.kit.base.runstate import FAILED, RunInfo, peek
from conformance.kit.base.settings import Settings, Timeouts, parse_pull_secret
from conformance.kit.cluster import waiting
from conformance.kit.probes import deploy, lives
from conformance.kit.probes.model import ProbeMap, planned_probes
from conformance.kit.probes.podspecs import to_manifest
from conformance.kit.run.session import run_properties

K8S_VERSION = "1.33"


def settings(**overrides: Any) -> Settings:
    return Settings(kubeconfig=None, context=None, **overrides)


def sample_map() -> ProbeMap:
    return ProbeMap(
        "ns",
        tuple(
            dataclasses.replace(p, pod_ips=("10.0.0.1", "fd00::1"), host_ip="192.0.2.1")
            for p in planned_probes(["n1", "n2"])
        ),
        node_addresses={"n1": ("192.0.2.1",), "n2": ("192.0.2.2",)},
    )


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r1", namespace="netconform-r1-abc", shared_dir=str(tmp_path))


# --- pod states ------------------------------------------------------------------------------


def test_pod_state_helpers() -> None:
    assert lives.pod_ready(pod_with(ready=True))
    assert not lives.pod_ready(pod_with())
    assert lives.restart_count(pod_with(), "a") == 2
    assert lives.restart_count(pod_with(), "zz") == 0
    assert deploy.fatal_reason(pod_with("ImagePullBackOff")) is None  # may still recover
    assert "InvalidImageName" in (deploy.fatal_reason(pod_with("InvalidImageName")) or "")
    assert "Failed" in (deploy.fatal_reason(pod_with(phase="Failed")) or "")


def test_explain_not_ready_names_state_and_warnings() -> None:
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="e"),
        involved_object=client.V1ObjectReference(name="probe-n1", kind="Pod"),
        type="Warning",
        reason="Failed",
        message='Failed to pull image "nicolaka/netshoot:v0.13"',
    )
    text = deploy.explain_not_ready(pod_with("ImagePullBackOff"), "probe-n1", [event])
    assert "ImagePullBackOff" in text
    assert "Failed to pull image" in text
    assert "node=n1" in text
    assert "never created" in deploy.explain_not_ready(None, "probe-n2", [])


class _PodsCore:
    """``list_namespaced_pod`` of a CoreV1Api answering one fixed list (no watch needed)."""

    def __init__(self, pods: list[client.V1Pod]) -> None:
        self.pods = pods

    def list_namespaced_pod(self, namespace: str, **_: Any) -> client.V1PodList:
        return client.V1PodList(items=self.pods, metadata=client.V1ListMeta(resource_version="1"))


def test_wait_for_pods_returns_once_all_are_ready() -> None:
    core = _PodsCore([pod_with(ready=True)])
    ready = deploy.wait_for_pods(
        core,  # type: ignore[arg-type]
        "ns",
        ["probe-n1"],
        timeout=5,
        timeouts=Timeouts(),
    )
    assert list(ready) == ["probe-n1"]


def test_wait_for_pods_gives_up_early_on_a_cause_that_will_not_recover() -> None:
    core = _PodsCore([pod_with("InvalidImageName")])
    with pytest.raises(ProbeDeploymentError, match=r"cannot start:\n  probe-n1: container a"):
        deploy.wait_for_pods(
            core,  # type: ignore[arg-type]
            "ns",
            ["probe-n1"],
            timeout=300,
            timeouts=Timeouts(),
        )


def crashing_pod(
    *,
    message: str | None = None,
    restarts: int = 3,
    waiting: str = "CrashLoopBackOff",
) -> client.V1Pod:
    """``probe-n1`` whose container ``b`` exits 1 over and over; ``message`` its termination
    message (None: the status holds none, as on a kubelet without FallbackToLogsOnError)."""
    pod = pod_with(ready=False, phase="Running")
    assert pod.status is not None
    pod.status.container_statuses = [
        client.V1ContainerStatus(
            name="b",
            image="i",
            image_id="",
            ready=False,
            restart_count=restarts,
            state=client.V1ContainerState(
                waiting=client.V1ContainerStateWaiting(reason=waiting, message="back-off 5s")
            ),
            last_state=client.V1ContainerState(
                terminated=client.V1ContainerStateTerminated(
                    exit_code=1, reason="Error", message=message
                )
            ),
        )
    ]
    return pod


class _CrashCore(_PodsCore):
    """Pods, and the previous log of a container (recording who asked)."""

    def __init__(self, pods: list[client.V1Pod], log: str = "") -> None:
        super().__init__(pods)
        self.log = log
        self.asked: list[dict[str, Any]] = []

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> str:
        self.asked.append({"name": name, **kwargs})
        return self.log


def wait(core: _PodsCore, timeout: float = 300) -> dict[str, client.V1Pod]:
    return deploy.wait_for_pods(
        core,  # type: ignore[arg-type]
        "ns",
        ["probe-n1"],
        timeout=timeout,
        timeouts=Timeouts(api_retry=0.5),
    )


def test_a_crash_loop_stops_the_wait_with_the_termination_message() -> None:
    words = "serve cannot start: EADDRINUSE: [Errno 98] Address in use: 0.0.0.0:8080"
    core = _CrashCore([crashing_pod(message=words)])
    with pytest.raises(ProbeDeploymentError) as raised:
        wait(core)
    text = str(raised.value)
    assert "probe-n1: container b is crash-looping (restarted 3 times): exit 1 (Error)" in text
    assert words in text
    assert core.asked == []  # the status said it all: no log read


def test_a_crash_loop_without_a_message_quotes_its_previous_log() -> None:
    log = "\n".join(f"line {i}" for i in range(30)) + "\npython3: not found\n"
    core = _CrashCore([crashing_pod(message=None, waiting="")], log=log)
    core.pods[0].status.container_statuses[0].state = client.V1ContainerState(  # type: ignore[union-attr, index]
        running=client.V1ContainerStateRunning()
    )  # running again, but restarted more than CRASH_LOOP_RESTARTS times
    with pytest.raises(ProbeDeploymentError, match="python3: not found") as raised:
        wait(core)
    assert "last log lines" in str(raised.value)
    assert "line 9\n" not in str(raised.value)  # the tail only
    (asked,) = core.asked
    assert asked["previous"] is True
    assert asked["container"] == "b"
    assert asked["tail_lines"] == deploy.LAST_WORDS_LINES


def test_a_restart_or_two_is_not_yet_a_crash_loop() -> None:
    assert deploy.crash_looping(crashing_pod(restarts=2, waiting="")) == []
    assert [c.name for c in deploy.crash_looping(crashing_pod(restarts=1))] == ["b"]
    assert [c.name for c in deploy.crash_looping(crashing_pod(restarts=3, waiting=""))] == ["b"]


def test_an_evicted_probe_stops_the_wait_naming_the_eviction() -> None:
    pod = pod_with(phase="Running")
    assert pod.metadata is not None
    assert pod.status is not None
    pod.metadata.deletion_timestamp = datetime(2026, 1, 1, tzinfo=UTC)
    pod.status.conditions = [
        client.V1PodCondition(
            type="DisruptionTarget",
            status="True",
            reason="EvictionByEvictionAPI",
            message="Eviction API: evicting",
        )
    ]
    with pytest.raises(
        ProbeDeploymentError,
        match=r"probe-n1: pod is being deleted \(EvictionByEvictionAPI: Eviction API: "
        r"evicting\): evicted or deleted by someone else",
    ):
        wait(_PodsCore([pod]))
    failed = pod_with(phase="Failed")
    assert failed.status is not None
    failed.status.conditions = pod.status.conditions
    assert deploy.fatal_reason(failed) == (
        "pod phase Failed: EvictionByEvictionAPI: Eviction API: evicting"
    )


def test_a_probe_deleted_while_starting_stops_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = pod_with(phase="Running")
    gone = pod_with(phase="Running")

    def events(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        yield {"type": "DELETED", "object": gone}

    monkeypatch.setattr(waiting, "watch_events", events)
    with pytest.raises(ProbeDeploymentError, match="probe-n1: pod was deleted: evicted or deleted"):
        wait(_PodsCore([pod]))


# --- pull secrets ----------------------------------------------------------------------------


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
    deploy.copy_pull_secrets(core, "netconform-x", "run1", custom)  # type: ignore[arg-type]
    (copy,) = core.created
    meta = copy.metadata
    assert meta is not None
    assert (meta.namespace, meta.name, meta.resource_version) == ("netconform-x", "regcred", None)
    assert (meta.labels or {})["netconform/run"] == "run1"
    assert (copy.type, copy.data) == (source.type, source.data)
    kubernetes_validate.validate(to_manifest(copy), K8S_VERSION, strict=True)

    missing = settings(image_pull_secrets=(parse_pull_secret("absent"),))
    with pytest.raises(ProbeDeploymentError, match="default/absent: HTTP 404"):
        deploy.copy_pull_secrets(core, "netconform-x", "run1", missing)  # type: ignore[arg-type]


# --- one deployment per run ------------------------------------------------------------------


def test_deploy_once_shares_the_result(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    calls: list[int] = []
    everyone_asked = threading.Barrier(4, timeout=10)

    def deploy_probes() -> deploy.Deployment:
        calls.append(1)
        return deploy.Deployment(probes=sample_map(), cluster=DEPLOYED_FACTS)

    def ask() -> deploy.Deployment:
        everyone_asked.wait()
        return deploy.deploy_once(run, deploy_probes)

    results: list[deploy.Deployment] = []
    threads = [threading.Thread(target=lambda: results.append(ask())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert len(results) == 4
    assert all(r == deploy.Deployment(probes=sample_map(), cluster=DEPLOYED_FACTS) for r in results)
    record = peek(run, deploy.DEPLOYMENT_RECORD)
    assert record is not None
    assert record.status == "done"
    properties = dict(run_properties(run, record))
    assert properties["netconform.deployment"] == "ready"
    assert properties["netconform.server_version"] == "v1.33.1"


def test_failed_deployment_is_not_retried(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    assert peek(run, deploy.DEPLOYMENT_RECORD) is None  # nothing started: no namespace to clean up

    def broken() -> deploy.Deployment:
        raise ProbeDeploymentError("probe-n1: ImagePullBackOff")

    with pytest.raises(ProbeDeploymentError):
        deploy.deploy_once(run, broken)
    with pytest.raises(ProbeDeploymentError, match="ImagePullBackOff") as again:
        deploy.deploy_once(run, lambda: pytest.fail("must not deploy again"))
    assert isinstance(again.value, CouldNotTest)
    record = peek(run, deploy.DEPLOYMENT_RECORD)
    assert record is not None
    assert record.status == FAILED
    properties = dict(run_properties(run, record))
    assert properties["netconform.deployment"] == "failed"
    assert "ImagePullBackOff" in properties["netconform.deployment_error"]


def test_deployment_round_trips_through_json() -> None:
    found = deploy.Deployment(
        probes=sample_map(), cluster=DEPLOYED_FACTS, stale_namespaces_deleted=("netconform-old-1",)
    )
    assert deploy.Deployment.from_dict(json.loads(json.dumps(found.to_dict()))) == found
    bare = deploy.Deployment(probes=ProbeMap("ns"))
    assert deploy.Deployment.from_dict(json.loads(json.dumps(bare.to_dict()))) == bare
