"""Robustness: malformed input of every kind gets a 4xx Status and never takes the server down."""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_api import LiveServer, pod_body, wait_ready

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def fuzz_ns(live: LiveServer) -> Iterator[str]:
    ns = f"fuzz-{uuid.uuid4().hex[:6]}"
    live.core.create_namespace({"metadata": {"name": ns}})
    live.core.create_namespaced_pod(ns, pod_body("target"))
    wait_ready(live, ns, "target")
    yield ns
    live.core.delete_namespace(ns)


def assert_status(status: int, body: object) -> None:
    assert status < 500, body
    if status >= 400:
        assert isinstance(body, dict), body
        assert body.get("kind") == "Status", body
        assert body["code"] == status


@FUZZ
@given(raw=st.binary(max_size=300), resource=st.sampled_from(["pods", "configmaps", "events"]))
def test_malformed_bodies(live: LiveServer, fuzz_ns: str, raw: bytes, resource: str) -> None:
    status, _, body = live.request("POST", f"/api/v1/namespaces/{fuzz_ns}/{resource}", raw=raw)
    assert_status(status, body)


@FUZZ
@given(
    doc=json_values,
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
            "application/apply-patch+yaml",
            "text/plain",
        ]
    ),
)
def test_wrong_shaped_json(
    live: LiveServer, fuzz_ns: str, doc: object, method: str, content_type: str
) -> None:
    path = f"/api/v1/namespaces/{fuzz_ns}/pods" + ("" if method == "POST" else "/target")
    status, _, body = live.request(method, path, doc, {"Content-Type": content_type})
    assert_status(status, body)


@FUZZ
@given(
    label=st.text(max_size=30),
    field=st.text(max_size=30),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "timeoutSeconds",
                "limit",
                "resourceVersion",
                "watch",
                "includeObject",
                "fieldValidation",
                "gracePeriodSeconds",
                "continue",
            ]
        ),
        st.text(max_size=8),
        max_size=3,
    ),
)
def test_bad_selectors_and_params(
    live: LiveServer, fuzz_ns: str, label: str, field: str, extra: dict[str, str]
) -> None:
    if extra.get("watch", "").lower() in ("1", "true"):
        extra["timeoutSeconds"] = "1"  # a valid watch must end quickly
    query = urllib.parse.urlencode({"labelSelector": label, "fieldSelector": field, **extra})
    status, _, body = live.request("GET", f"/api/v1/namespaces/{fuzz_ns}/pods?{query}")
    assert_status(status, body)


continue_tokens = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.builds(
        lambda v, rv, start: (
            base64.urlsafe_b64encode(json.dumps({"v": v, "rv": rv, "start": start}).encode())
            .decode()
            .rstrip("=")
        ),
        st.sampled_from(["meta.k8s.io/v1", "v2", ""]),
        json_values,
        st.text(max_size=12),
    ),
)


@FUZZ
@given(
    limit=st.one_of(st.integers(), st.text(max_size=8)).map(str),
    token=continue_tokens,
    scope=st.sampled_from(["/api/v1/pods", "/api/v1/namespaces/{ns}/pods", "/api/v1/nodes"]),
    table=st.booleans(),
)
def test_paging_params(
    live: LiveServer, fuzz_ns: str, limit: str, token: str, scope: str, table: bool
) -> None:
    """Bad limits and garbage continue tokens: 400 (or 410 for a lost snapshot), never a 5xx."""
    query = urllib.parse.urlencode({"limit": limit, "continue": token})
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"} if table else {}
    status, _, body = live.request("GET", scope.format(ns=fuzz_ns) + "?" + query, headers=headers)
    assert_status(status, body)
    if status == 200 and token:
        assert body["metadata"]["resourceVersion"], body


@FUZZ
@given(
    path=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-._~%", max_size=12), max_size=6),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
)
def test_random_paths(live: LiveServer, path: list[str], method: str) -> None:
    status, _, body = live.request(method, "/api/v1/" + "/".join(path) + "?timeoutSeconds=1")
    assert_status(status, body)


def test_huge_body_is_413(live: LiveServer, fuzz_ns: str) -> None:
    huge = {"metadata": {"name": "huge"}, "data": {"k": "x" * (4 * 1024 * 1024)}}
    status, _, body = live.request("POST", f"/api/v1/namespaces/{fuzz_ns}/configmaps", huge)
    assert status == 413
    assert body["reason"] == "RequestEntityTooLarge"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=8))
def test_bad_exec_frames(live: LiveServer, fuzz_ns: str, frames: list[tuple[bool, bytes]]) -> None:
    url = live.server.url.replace("https://", "wss://")
    ws = websocket.create_connection(
        f"{url}/api/v1/namespaces/{fuzz_ns}/pods/target/exec?command=cat&stdin=true&stdout=true",
        header=[f"Authorization: Bearer {live.server.token}"],
        subprotocols=["v5.channel.k8s.io"],
        timeout=10,
        sslopt={"ca_certs": str(live.server.ca_path)},
    )
    for as_text, data in frames:
        if as_text:
            ws.send(data.decode("latin-1"))
        else:
            ws.send_binary(data)
    ws.close()


def test_server_still_answers(live: LiveServer, fuzz_ns: str) -> None:
    status, _, body = live.request("GET", "/healthz")
    assert status == 200
    status, _, body = live.request("GET", f"/api/v1/namespaces/{fuzz_ns}/pods/target")
    assert status == 200
    assert body["metadata"]["name"] == "target"
    assert json.dumps(live.request("GET", "/version")[2]).count("v1.31.0-netlab") == 1


odd: st.SearchStrategy[Any] = (  # None twice: nulls are the interesting case
    st.none()
    | st.none()
    | st.integers()
    | st.text(max_size=5)
    | st.lists(st.none(), max_size=2)
    | st.just({})
)
pod_like = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"generateName": st.just("f-")}, optional={"labels": odd, "annotations": odd}
        )
    },
    optional={
        "spec": st.fixed_dictionaries(
            {
                "containers": st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["a", "b"]), "image": st.just("busybox")},
                        optional={
                            k: odd
                            for k in (
                                "ports",
                                "resources",
                                "env",
                                "command",
                                "readinessProbe",
                                "volumeMounts",
                            )
                        },
                    ),
                    max_size=2,
                )
            },
            optional={
                k: odd
                for k in (
                    "tolerations",
                    "nodeSelector",
                    "volumes",
                    "initContainers",
                    "nodeName",
                    "securityContext",
                    "restartPolicy",
                )
            },
        ),
        "status": odd,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pod=pod_like)
def test_pod_shaped_nonsense(live: LiveServer, fuzz_ns: str, pod: dict[str, object]) -> None:
    status, _, body = live.request("POST", f"/api/v1/namespaces/{fuzz_ns}/pods", pod)
    assert_status(status, body)
    if status == 201:  # whatever was admitted must also list and print as a Table
        for accept in ("application/json", "application/json;as=Table;v=v1;g=meta.k8s.io"):
            listed, _, rows = live.request(
                "GET", f"/api/v1/namespaces/{fuzz_ns}/pods", headers={"Accept": accept}
            )
            assert_status(listed, rows)
