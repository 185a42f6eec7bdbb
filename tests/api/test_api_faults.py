"""The control-plane faults at the HTTP level, through the official client (and kubectl):
ServiceAccount lag and admission, throttling, server errors, slow answers, cut streams,
evictions, restarts, RBAC denials, the pre-1.30 exec protocol and Linux's argv limit, and the
admin endpoint that switches them at run time.

One server (``faulty``) serves the module; each test switches on the faults it needs and the
``faults`` fixture switches them back to a healthy server (sa-delay=0) afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import websocket
from kube_access import pod_exec
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from live_api import (
    LiveServer,
    new_watch,
    pod_body,
    scratch_namespace,
    serving,
    until,
    wait_ready,
    watch_until,
)

from netlab import cli
from netlab.api.execs import DEFAULT_PATH
from netlab.api.faults import parse_api_faults
from netlab.spec import INFO_FILE

HEALTHY = ("sa-delay=0",)
Switch = Callable[..., None]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory, HEALTHY, client_retries=0) as server:
        yield server


@pytest.fixture
def faults(faulty: LiveServer) -> Iterator[Switch]:
    """Switch the server's API faults (as the admin endpoint does); healthy again after."""

    def switch(*specs: str) -> None:
        faulty.call(faulty.server.faults.set, parse_api_faults(specs))

    yield switch
    switch(*HEALTHY)


@pytest.fixture
def ns(faulty: LiveServer) -> Iterator[str]:
    """A namespace whose `default` ServiceAccount exists (made while the server is healthy)."""
    with scratch_namespace(faulty, "f") as name:
        yield name
        faulty.call(faulty.server.faults.set, parse_api_faults(HEALTHY))


def status_of(error: ApiException) -> dict[str, Any]:
    body = json.loads(error.body)
    assert isinstance(body, dict)
    return body


# --- ServiceAccounts -------------------------------------------------------------------------


def test_pod_before_the_default_serviceaccount_is_refused_as_admission_refuses_it(
    faulty: LiveServer, faults: Switch
) -> None:
    faults("sa-delay=0.4")
    name = f"f-{uuid.uuid4().hex[:8]}"
    created = time.monotonic()
    faulty.core.create_namespace({"metadata": {"name": name}})
    try:
        assert faulty.core.list_namespaced_service_account(name).items == []
        with pytest.raises(ApiException) as refused:
            faulty.core.create_namespaced_pod(name, pod_body("web"))
        assert refused.value.status == 403
        assert status_of(refused.value) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'pods "web" is forbidden: error looking up service account '
            f'{name}/default: serviceaccount "default" not found',
            "reason": "Forbidden",
            "details": {"name": "web", "kind": "pods"},
            "code": 403,
        }
        # What the upstream e2e framework does: wait for the account, then create pods.
        watch_until(
            faulty.core.list_namespaced_service_account,
            name,
            timeout_seconds=10,
            until=lambda seen: (
                (seen[-1]["type"], seen[-1]["object"].metadata.name) == ("ADDED", "default")
            ),
            missing="the default ServiceAccount never appeared",
        )
        print(f"default ServiceAccount after {time.monotonic() - created:.2f} s")
        faulty.core.create_namespaced_pod(name, pod_body("web"))
        assert wait_ready(faulty, name, "web").metadata.name == "web"
    finally:
        faulty.core.delete_namespace(name)


def test_serviceaccounts_are_served_with_the_real_shapes(faulty: LiveServer, ns: str) -> None:
    account = until(lambda: faulty.core.list_namespaced_service_account(ns).items, 5, "default SA")[
        0
    ]
    assert (account.metadata.name, account.metadata.namespace) == ("default", ns)
    assert account.metadata.uid
    assert account.metadata.resource_version
    assert account.secrets is None  # no token Secrets since Kubernetes 1.24
    _, _, raw = faulty.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
    assert raw["kind"] == "ServiceAccount"
    assert raw["apiVersion"] == "v1"
    faulty.core.create_namespaced_service_account(ns, {"metadata": {"name": "probe"}})
    names = [sa.metadata.name for sa in faulty.core.list_namespaced_service_account(ns).items]
    assert sorted(names) == ["default", "probe"]
    _, _, table = faulty.request(
        "GET",
        f"/api/v1/namespaces/{ns}/serviceaccounts",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Secrets", "Age"]
    assert [row["cells"][:2] for row in table["rows"]] == [["default", 0], ["probe", 0]]
    _, _, discovery = faulty.request("GET", "/api/v1")
    served = {entry["name"]: entry for entry in discovery["resources"]}
    assert served["serviceaccounts"]["shortNames"] == ["sa"]
    assert served["serviceaccounts"]["kind"] == "ServiceAccount"
    assert "watch" in served["serviceaccounts"]["verbs"]
    assert served["pods/eviction"] == {
        "name": "pods/eviction",
        "singularName": "",
        "namespaced": True,
        "group": "policy",
        "version": "v1",
        "kind": "Eviction",
        "verbs": ["create"],
    }
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        shown = subprocess.run(
            [kubectl, "--kubeconfig", str(faulty.kubeconfig), "get", "sa", "-n", ns],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        assert shown[:3] == ["NAME", "SECRETS", "AGE"]
        assert shown[3:5] == ["default", "0"]


def test_a_deleted_default_account_comes_back_and_custom_ones_are_checked(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    faults("sa-delay=0.2")
    faulty.core.delete_namespaced_service_account("default", ns)
    with pytest.raises(ApiException) as refused:
        faulty.core.create_namespaced_pod(
            ns, {**pod_body(""), "metadata": {"generateName": "probe-"}}
        )
    # Admission runs before the name is generated: the message names the prefix.
    assert status_of(refused.value)["message"].startswith('pods "probe-" is forbidden')
    until(lambda: faulty.core.list_namespaced_service_account(ns).items, 5, "default SA again")
    with pytest.raises(ApiException) as custom:
        faulty.core.create_namespaced_pod(ns, pod_body("web", serviceAccountName="runner"))
    assert status_of(custom.value)["message"] == (
        f'pods "web" is forbidden: error looking up service account {ns}/runner: '
        'serviceaccount "runner" not found'
    )
    faulty.core.create_namespaced_service_account(ns, {"metadata": {"name": "runner"}})
    created = faulty.core.create_namespaced_pod(ns, pod_body("web", serviceAccountName="runner"))
    assert created.spec.service_account_name == "runner"


# --- throttling, server errors, slow answers --------------------------------------------------


def _statuses(server: LiveServer, count: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(count):
        status, headers, body = server.request("GET", "/api/v1/nodes")
        out.append((status, str(headers.get("Retry-After"))))
        assert body is not None
    return out


def test_throttling_answers_429_in_both_real_shapes(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    faults("throttle=1:2")
    seen_text = seen_status = False
    for _ in range(20):
        status, headers, body = faulty.request("GET", f"/api/v1/namespaces/{ns}/pods")
        assert status == 429
        assert headers["Retry-After"] == "2"
        if isinstance(body, bytes):  # priority-and-fairness: plain text
            assert body == b"Too many requests, please try again later.\n"
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
            assert headers["X-Content-Type-Options"] == "nosniff"
            seen_text = True
        else:  # the watch cache, (re)initializing: a Status
            assert body == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "storage is (re)initializing",
                "reason": "TooManyRequests",
                "details": {"retryAfterSeconds": 2},
                "code": 429,
            }
            seen_status = True
    assert seen_text
    assert seen_status
    for _ in range(5):  # writes meet priority-and-fairness only
        status, _, body = faulty.request(
            "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "c"}}
        )
        assert (status, body) == (429, b"Too many requests, please try again later.\n")
    with pytest.raises(ApiException) as error:
        faulty.core.list_node()
    assert error.value.status == 429
    assert error.value.headers["Retry-After"] == "2"
    assert faulty.request("GET", "/healthz")[0] == 200  # health checks are never throttled


def test_throttling_is_deterministic_per_seed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    runs = []
    for seed in (5, 5, 6):
        with serving(tmp_path_factory, ("sa-delay=0", "throttle=0.5", f"seed={seed}")) as server:
            runs.append(_statuses(server, 40))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    throttled = sum(status == 429 for status, _ in runs[0])
    print(f"seed 5: {throttled} of 40 requests throttled")
    assert 8 <= throttled <= 32


def test_server_errors_as_etcd_and_unavailable_answer(faulty: LiveServer, faults: Switch) -> None:
    faults("server-error=1")
    shapes = set()
    for _ in range(20):
        status, _, body = faulty.request("GET", "/api/v1/namespaces")
        assert status in (500, 503)
        expected = (
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "etcdserver: request timed out",
                "code": 500,
            }
            if status == 500
            else {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "the server is currently unable to handle the request",
                "reason": "ServiceUnavailable",
                "code": 503,
            }
        )
        assert body == expected
        shapes.add(status)
    assert shapes == {500, 503}
    with pytest.raises(ApiException) as error:
        faulty.core.list_namespace()
    assert error.value.status in (500, 503)


def test_slow_answers_come_late(faulty: LiveServer, faults: Switch) -> None:
    faults("slow=1:0.4")
    started = time.monotonic()
    faulty.core.list_node()
    late = time.monotonic() - started
    print(f"a slowed request took {late:.2f} s")
    assert late >= 0.4


# --- cut streams -----------------------------------------------------------------------------


def test_watches_and_execs_lose_their_connection(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    for index in range(10):
        faulty.core.create_namespaced_pod(ns, pod_body(f"p{index}"))
    wait_ready(faulty, ns, "p0")
    faults("cut-streams=1", "seed=1")

    def watch_all(into: list[Any]) -> None:
        for event in new_watch().stream(faulty.core.list_namespaced_pod, ns, timeout_seconds=20):
            into.append(event)

    for attempt in range(3):
        seen: list[Any] = []
        with pytest.raises(urllib3.exceptions.ProtocolError):
            watch_all(seen)
        assert len(seen) < 10, f"watch {attempt} got every pod before its cut"
    command = ["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x"]
    for _ in range(3):
        resp = pod_exec(faulty.core, "p0", ns, command, preload=False)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            resp.run_forever(timeout=10)
        assert len(resp.read_stdout()) < 10000
        assert resp.read_channel(3) == ""  # no exit status ever came
    faults(*HEALTHY)
    output = pod_exec(faulty.core, "p0", ns, command)
    assert len(output) == 10000


# --- eviction --------------------------------------------------------------------------------


def _pods(server: LiveServer, ns: str) -> dict[str, Any]:
    return {pod.metadata.name: pod for pod in server.core.list_namespaced_pod(ns).items}


def test_the_eviction_subresource(faulty: LiveServer, ns: str) -> None:
    faulty.core.create_namespaced_pod(ns, pod_body("web"))
    wait_ready(faulty, ns, "web")
    status, _, body = faulty.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods/web/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "other"}},
    )
    assert (status, body["message"]) == (
        400,
        "name in URL does not match name in Eviction object",
    )
    dry = client.V1Eviction(metadata=client.V1ObjectMeta(name="web", namespace=ns))
    faulty.core.create_namespaced_pod_eviction("web", ns, dry, dry_run="All")
    assert _pods(faulty, ns)["web"].metadata.deletion_timestamp is None
    status, _, body = faulty.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods/web/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "web", "namespace": ns},
            "deleteOptions": {"gracePeriodSeconds": 0},
        },
    )
    assert (status, body) == (
        201,
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201},
    )
    until(lambda: "web" not in _pods(faulty, ns), 10, "the evicted pod gone")
    status, _, body = faulty.request(
        "POST",
        f"/api/v1/namespaces/{ns}/pods/web/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web"}},
    )
    assert (status, body["message"]) == (404, 'pods "web" not found')


def test_the_evict_fault_evicts_one_matching_pod_per_namespace(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    faults("sa-delay=0", "evict=app=probe@0.3s")
    disrupted: list[Any] = []

    def watch_pods() -> None:
        watcher = new_watch()
        for event in watcher.stream(faulty.core.list_namespaced_pod, ns, timeout_seconds=2):
            pod = event["object"]
            conditions = pod.status.conditions or [] if pod.status else []
            if any(c.type == "DisruptionTarget" for c in conditions) or (
                pod.metadata.deletion_timestamp is not None
            ):
                disrupted.append(pod)

    watching = threading.Thread(target=watch_pods)
    watching.start()
    for name in ("a", "b"):
        faulty.core.create_namespaced_pod(ns, pod_body(name, labels={"app": "probe"}))
    faulty.core.create_namespaced_pod(ns, pod_body("bystander", labels={"app": "other"}))
    watching.join(10)  # the watch ends after 2 s: the fault fired once, well before
    names = {pod.metadata.name for pod in disrupted}
    assert len(names) == 1, names
    assert names <= {"a", "b"}
    condition = next(
        c
        for pod in disrupted
        for c in (pod.status.conditions or [])
        if c.type == "DisruptionTarget"
    )
    assert (condition.status, condition.reason, condition.message) == (
        "True",
        "EvictionByEvictionAPI",
        "Eviction API: evicting",
    )
    until(lambda: len(_pods(faulty, ns)) == 2, 10, "the evicted pod gone")
    assert set(_pods(faulty, ns)) == {"a", "b", "bystander"} - names


def test_the_delete_fault_deletes_without_an_eviction(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    faults("sa-delay=0", "delete=app=probe@0.2s")
    faulty.core.create_namespaced_pod(
        ns, pod_body("a", labels={"app": "probe"}, terminationGracePeriodSeconds=0)
    )
    until(lambda: "a" not in _pods(faulty, ns), 10, "the deleted pod gone")


# --- restart ---------------------------------------------------------------------------------


def _refused(server: LiveServer) -> bool:
    host, port = server.server.url.removeprefix("https://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_restart_drops_connections_and_keeps_state(faulty: LiveServer, ns: str) -> None:
    faulty.core.create_namespaced_config_map(ns, {"metadata": {"name": "before"}})
    listed = faulty.core.list_namespaced_config_map(ns)
    outcome: list[str] = []

    def watch_config_maps() -> None:
        try:
            for event in new_watch().stream(
                faulty.core.list_namespaced_config_map,
                ns,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=30,
            ):
                outcome.append(event["type"])
        except urllib3.exceptions.ProtocolError as error:
            outcome.append(f"cut: {error}")

    watching = threading.Thread(target=watch_config_maps)
    watching.start()
    until(
        # The client's watch is the namespaced one (the root CA publisher watches them all).
        lambda: any(
            w.resource == "configmaps" and w.namespace == ns for w in faulty.server.store._watchers
        ),
        5,
        "the watch registered",
    )
    restart = asyncio.run_coroutine_threadsafe(faulty.server.restart(1.0), faulty.loop)
    until(lambda: _refused(faulty), 5, "the API down")
    restart.result(10)
    watching.join(10)
    assert outcome, "the watch saw nothing at all"
    assert outcome[-1].startswith("cut:"), outcome
    assert not _refused(faulty)
    created = faulty.core.create_namespaced_config_map(ns, {"metadata": {"name": "after"}})
    assert int(created.metadata.resource_version) > int(listed.metadata.resource_version)
    names = {cm.metadata.name for cm in faulty.core.list_namespaced_config_map(ns).items}
    assert names == {"after", "before", "kube-root-ca.crt"}


def test_a_restart_waits_for_its_port_if_something_took_it(faulty: LiveServer) -> None:
    host, port = faulty.server.url.removeprefix("https://").split(":")
    restart = asyncio.run_coroutine_threadsafe(faulty.server.restart(0.5), faulty.loop)
    until(lambda: _refused(faulty), 5, "the API down")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        # Its 0.5 s of down time pass while the port is taken: it must still be trying.
        finished, _ = concurrent.futures.wait([restart], timeout=1.5)
        assert not finished
    restart.result(10)
    assert faulty.core.list_namespace().items


def test_the_restart_fault_runs_on_its_schedule(faulty: LiveServer, faults: Switch) -> None:
    faults("sa-delay=0", "restart=0.5s:0.5s")
    until(lambda: _refused(faulty), 10, "the first scheduled outage")
    until(lambda: not _refused(faulty), 10, "the API back")
    faults(*HEALTHY)
    until(lambda: faulty.core.list_namespace().items, 10, "a request served")


# --- RBAC denials ----------------------------------------------------------------------------


def test_forbidden_as_rbac_words_it(faulty: LiveServer, faults: Switch, ns: str) -> None:
    faulty.core.create_namespaced_pod(ns, pod_body("web"))
    wait_ready(faulty, ns, "web")
    faults(
        "sa-delay=0",
        "forbid=list:nodes,create:secrets,get:namespaces",
        "forbid=create:pods/exec,list:leases.coordination.k8s.io",
    )
    user = "netlab-user"
    with pytest.raises(ApiException) as nodes:
        faulty.core.list_node()
    assert status_of(nodes.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'nodes is forbidden: User "{user}" cannot list resource "nodes" in API '
        'group "" at the cluster scope',
        "reason": "Forbidden",
        "details": {"kind": "nodes"},
        "code": 403,
    }
    with pytest.raises(ApiException) as secrets:  # not served by the lab: denied before 404
        faulty.core.create_namespaced_secret(ns, {"metadata": {"name": "pull"}})
    assert status_of(secrets.value)["message"] == (
        f'secrets is forbidden: User "{user}" cannot create resource "secrets" in API group "" '
        f'in the namespace "{ns}"'
    )
    with pytest.raises(ApiException) as namespace:
        faulty.core.read_namespace(ns)
    assert status_of(namespace.value)["message"] == (
        f'namespaces "{ns}" is forbidden: User "{user}" cannot get resource "namespaces" in '
        f'API group "" in the namespace "{ns}"'
    )
    assert status_of(namespace.value)["details"] == {"kind": "namespaces", "name": ns}
    status, _, body = faulty.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases")
    assert status == 403
    assert body["message"] == (
        f'leases.coordination.k8s.io is forbidden: User "{user}" cannot list resource "leases" '
        f'in API group "coordination.k8s.io" in the namespace "{ns}"'
    )
    assert body["details"] == {"kind": "leases", "group": "coordination.k8s.io"}
    with pytest.raises(websocket.WebSocketBadStatusException) as exec_denied:
        websocket.create_connection(
            faulty.server.url.replace("https://", "wss://")
            + f"/api/v1/namespaces/{ns}/pods/web/exec?command=true&stdout=true",
            header=[f"Authorization: Bearer {faulty.server.token}"],
            subprotocols=["v5.channel.k8s.io"],
            timeout=10,
            sslopt={"ca_certs": str(faulty.server.ca_path)},
        )
    assert exec_denied.value.status_code == 403
    assert json.loads(exec_denied.value.resp_body)["message"] == (
        f'pods "web" is forbidden: User "{user}" cannot create resource "pods/exec" in API '
        f'group "" in the namespace "{ns}"'
    )
    assert faulty.core.list_namespaced_pod(ns).items  # what is not denied still works
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run(
            [kubectl, "--kubeconfig", str(faulty.kubeconfig), "get", "nodes"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f'Error from server (Forbidden): nodes is forbidden: User "{user}" cannot list '
            'resource "nodes" in API group "" at the cluster scope'
        )
    faults("sa-delay=0", "forbid=*:nodes", "forbid-user=system:serviceaccount:ci:netconform")
    with pytest.raises(ApiException) as named:
        faulty.core.read_node("node-1")
    assert status_of(named.value)["message"].startswith(
        'nodes "node-1" is forbidden: User "system:serviceaccount:ci:netconform" cannot get'
    )


# --- exec: the pre-1.30 protocols and Linux's argv limit -------------------------------------


def _exec_url(server: LiveServer, ns: str, pod: str, *command: str) -> str:
    query = "&".join(f"command={c}" for c in command)
    return (
        server.server.url.replace("https://", "wss://")
        + f"/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}&stdout=true&stderr=true"
    )


def test_exec_v4_only_offers_what_servers_before_1_30_offer(
    faulty: LiveServer, faults: Switch, ns: str
) -> None:
    faulty.core.create_namespaced_pod(ns, pod_body("web"))
    wait_ready(faulty, ns, "web")

    def echo() -> Any:
        return pod_exec(faulty.core, "web", ns, ["echo", "hi"], preload=False)

    assert echo().subprotocol == "v5.channel.k8s.io"
    faults("sa-delay=0", "exec-v4-only")
    resp = echo()  # the client offers v5 and v4: it gets v4, and cannot half-close stdin
    assert resp.subprotocol == "v4.channel.k8s.io"
    resp.run_forever(timeout=10)
    assert resp.read_stdout() == "hi\n"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            _exec_url(faulty, ns, "web", "true"),
            header=[f"Authorization: Bearer {faulty.server.token}"],
            subprotocols=["v5.channel.k8s.io"],
            timeout=10,
            sslopt={"ca_certs": str(faulty.server.ca_path)},
        )
    assert (refused.value.status_code, refused.value.resp_body) == (403, b"")


@pytest.mark.parametrize(("length", "starts"), [(131071, True), (131072, False)])
def test_an_argument_longer_than_linux_allows_cannot_start(
    faulty: LiveServer, ns: str, length: int, starts: bool
) -> None:
    faulty.core.create_namespaced_pod(ns, pod_body("web"))
    wait_ready(faulty, ns, "web")
    command = ["python3", "-c", "import sys; print(len(sys.argv[1]))", "x" * length]
    resp = pod_exec(faulty.core, "web", ns, command, preload=False)
    resp.run_forever(timeout=20)
    status = json.loads(resp.read_channel(3))
    if starts:
        assert resp.read_stdout() == f"{length}\n"
        assert status == {"metadata": {}, "status": "Success"}
        return
    assert resp.read_stdout() == ""
    assert status["status"] == "Failure"
    assert status["reason"] == "InternalError"
    assert status["code"] == 500
    cause = status["details"]["causes"][0]["message"]
    assert status["message"] == f"Internal error occurred: {cause}"
    assert cause.startswith("error executing command in container: failed to exec in container")
    python = shutil.which("python3", path=DEFAULT_PATH)
    assert cause.endswith(f"exec {python}: argument list too long: unknown")


# --- the admin endpoint and `netlab api-faults` ----------------------------------------------


def test_the_admin_endpoint_switches_faults_at_run_time(faulty: LiveServer) -> None:
    try:
        assert faulty.request("GET", "/netlab/api-faults")[2] == {"faults": list(HEALTHY)}
        status, _, body = faulty.request("PUT", "/netlab/api-faults", {"faults": ["throttle=1"]})
        assert (status, body) == (200, {"faults": ["throttle=1"]})
        assert faulty.request("GET", "/api/v1/nodes")[0] == 429
        assert faulty.request("GET", "/netlab/api-faults")[0] == 200  # never faulted itself
        status, _, body = faulty.request("PUT", "/netlab/api-faults", {"faults": ["throttle=2"]})
        assert (status, body["message"]) == (
            400,
            "throttle: '2' is not a number between 0 and 1",
        )
        assert faulty.request("PUT", "/netlab/api-faults", {"faults": "throttle=1"})[0] == 400
        assert faulty.request("DELETE", "/netlab/api-faults")[0] == 405
    finally:
        status, _, _ = faulty.request("PUT", "/netlab/api-faults", {"faults": list(HEALTHY)})
    assert status == 200
    assert faulty.request("GET", "/api/v1/nodes")[0] == 200
    request_without_token = faulty.server.url + "/netlab/api-faults"
    pool = urllib3.PoolManager(ca_certs=str(faulty.server.ca_path))
    assert pool.request("GET", request_without_token).status == 401


def test_netlab_api_faults_command(
    faulty: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = tmp_path / "test"
    lab.mkdir()
    (lab / INFO_FILE).write_text(json.dumps({"kubeconfig": str(faulty.kubeconfig)}))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--state-root", str(tmp_path), "api-faults", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run()
    assert code == 0
    assert "throttle=FRACTION[:RETRY_AFTER]" in out
    assert "exec-v4-only" in out
    try:
        assert run("--name", "test") == (0, "sa-delay=0\n", "")
        code, out, _ = run("--name", "test", "--set", "sa-delay=0", "--set", "slow=0.5:1s")
        assert (code, out) == (0, "sa-delay=0\nslow=0.5:1s\n")
        assert faulty.server.faults.current.slow == 0.5
        code, _, err = run("--name", "test", "--set", "slow=2:1")
        assert code == 2
        assert err.strip() == "netlab: slow: '2' is not a number between 0 and 1"
        assert run("--name", "nope")[0] == 1
        assert run("--name", "test", "--clear") == (0, "none\n", "")
        assert faulty.server.faults.current.sa_delay == (0.5, 1.0)
    finally:
        faulty.call(faulty.server.faults.set, parse_api_faults(HEALTHY))
