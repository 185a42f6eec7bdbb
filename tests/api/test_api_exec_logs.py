"""exec over WebSocket (v4 through kubernetes.stream, v5 raw) and pods/log."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import websocket
from fake_agent import log_text
from kube_access import pod_exec
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from live_api import LiveServer, pod_body, wait_ready

V4 = {"sec-websocket-protocol": "v4.channel.k8s.io"}


@pytest.fixture(scope="module")
def running(live: LiveServer) -> Iterator[tuple[str, str]]:
    """A namespace with a Ready one-container pod `solo` and a two-container pod `duo`."""
    ns = f"x-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": ns}})
    live.core.create_namespaced_pod(ns, pod_body("solo"))
    live.core.create_namespaced_pod(ns, pod_body("duo", containers=2))
    wait_ready(live, ns, "solo")
    wait_ready(live, ns, "duo")
    yield ns, "solo"
    live.core.delete_namespace(ns)


def test_exec_v4_stdout_stderr_exit_code(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    command = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    resp = pod_exec(live.core, pod, ns, command, preload=False, headers=V4)
    resp.run_forever(timeout=10)
    assert resp.subprotocol == "v4.channel.k8s.io"
    assert resp.read_stdout() == "out\n"
    assert resp.read_stderr() == "err\n"
    assert resp.returncode == 3
    resp.close()


def test_exec_preloaded_and_success(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    output = pod_exec(live.core, pod, ns, ["echo", "hello"], headers=V4)
    assert output == "hello\n"


def test_exec_v5_stdin_close(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    resp = pod_exec(live.core, pod, ns, ["cat"], preload=False, stdin=True)
    assert resp.subprotocol == "v5.channel.k8s.io"
    resp.write_stdin("ping-pong")
    resp.close_channel(0)
    resp.run_forever(timeout=10)
    assert resp.read_stdout() == "ping-pong"
    assert resp.returncode == 0


def _ws(live: LiveServer, path: str, protocol: str = "v5.channel.k8s.io") -> websocket.WebSocket:
    url = live.server.url.replace("https://", "wss://") + path
    return websocket.create_connection(
        url,
        header=[f"Authorization: Bearer {live.server.token}"],
        subprotocols=[protocol],
        timeout=10,
        sslopt={"ca_certs": str(live.server.ca_path)},
    )


def _collect(ws: websocket.WebSocket) -> dict[int, bytes]:
    channels: dict[int, bytes] = {}
    while True:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketConnectionClosedException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if data:
            channels[data[0]] = channels.get(data[0], b"") + data[1:]
    return channels


def test_exec_raw_v5_error_channel_shape(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    query = "command=sh&command=-c&command=echo%20hi%3B%20exit%207&stdout=true&stderr=true"
    ws = _ws(live, f"/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}")
    assert ws.getsubprotocol() == "v5.channel.k8s.io"
    channels = _collect(ws)
    assert channels[1] == b"hi\n"
    status = json.loads(channels[3])
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "7"}]}
    assert status["message"].startswith("command terminated with non-zero exit code")
    ws = _ws(live, f"/api/v1/namespaces/{ns}/pods/{pod}/exec?command=true&stdout=true")
    assert json.loads(_collect(ws)[3]) == {"metadata": {}, "status": "Success"}


def test_exec_base64_variant(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    ws = _ws(
        live,
        f"/api/v1/namespaces/{ns}/pods/{pod}/exec?command=echo&command=b64&stdout=true",
        "v4.base64.channel.k8s.io",
    )
    frames = []
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        frames.append(data.decode())
    import base64

    assert any(f[0] == "1" and base64.b64decode(f[1:]) == b"b64\n" for f in frames)


def test_exec_errors_are_statuses(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    status, _, body = live.request(
        "POST", f"/api/v1/namespaces/{ns}/pods/{pod}/exec?command=ls&stdout=true"
    )
    assert status == 400
    assert body["message"].startswith("Upgrade request required")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        _ws(live, f"/api/v1/namespaces/{ns}/pods/duo/exec?command=ls&stdout=true")
    assert info.value.status_code == 400
    assert b"a container name must be specified for pod duo, choose one of: [main side1]" in (
        info.value.resp_body or b""
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        _ws(live, f"/api/v1/namespaces/{ns}/pods/nope/exec?command=ls&stdout=true")
    assert info.value.status_code == 404


def test_exec_concurrent(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    results: list[str] = []

    def one(i: int) -> None:
        # stream() patches its ApiClient while it runs: one client per thread.
        with client.ApiClient(live.api_client.configuration) as own:
            core = client.CoreV1Api(own)
            results.append(pod_exec(core, pod, ns, ["echo", str(i)], stderr=False, headers=V4))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(results, key=int) == [f"{i}\n" for i in range(20)]


def test_logs(live: LiveServer, running: tuple[str, str]) -> None:
    ns, pod = running
    assert live.core.read_namespaced_pod_log(pod, ns) == log_text("main").decode()
    assert live.core.read_namespaced_pod_log(pod, ns, tail_lines=2) == "main line 4\nmain line 5\n"
    assert live.core.read_namespaced_pod_log("duo", ns, container="side1").startswith(
        "side1 line 1"
    )
    with pytest.raises(ApiException) as info:
        live.core.read_namespaced_pod_log("duo", ns)
    assert info.value.status == 400
    assert (
        json.loads(str(info.value.body))["message"]
        == "a container name must be specified for pod duo, choose one of: [main side1]"
    )
    with pytest.raises(ApiException) as info:
        live.core.read_namespaced_pod_log(pod, ns, container="ghost")
    assert info.value.status == 400


def test_logs_follow_ends_with_pod(live: LiveServer, running: tuple[str, str]) -> None:
    ns, _ = running
    live.core.create_namespaced_pod(ns, pod_body("follow"))
    wait_ready(live, ns, "follow")
    response = live.core.read_namespaced_pod_log("follow", ns, follow=True, _preload_content=False)
    first = response.read(len(log_text("main")))
    assert first == log_text("main")
    live.core.delete_namespaced_pod("follow", ns, grace_period_seconds=0)
    assert response.read() == b"stopped\n"
