"""Media types as kube-apiserver negotiates them: 415 UnsupportedMediaType (with its text and the
types the lab accepts) for a body it cannot decode, 406 NotAcceptable for an Accept it can serve
none of, JSON when any clause allows it, YAML when YAML comes first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml
from live_api import LiveServer

PROTOBUF = "application/vnd.kubernetes.protobuf"
UNKNOWN_FORMAT = "the body of the request was in an unknown format - accepted media types include: "


@pytest.fixture(scope="module")
def ns(live: LiveServer) -> Iterator[str]:
    name = f"mt-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": name}})
    live.core.create_namespaced_config_map(name, {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    yield name
    live.request("DELETE", f"/api/v1/namespaces/{name}")


def test_a_protobuf_body_is_415_with_the_accepted_types(live: LiveServer, ns: str) -> None:
    # client-go's protobuf envelope: "k8s\0" and an Unknown message; the lab decodes none of it.
    status, headers, body = live.request(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        raw=b"k8s\x00\n\x0f\n\x02v1\x12\tConfigMap",
        headers={"Content-Type": PROTOBUF},
    )
    assert status == 415
    assert headers["Content-Type"].startswith("application/json")
    assert body["kind"] == "Status"
    assert body["reason"] == "UnsupportedMediaType"
    assert body["code"] == 415
    assert body["message"] == UNKNOWN_FORMAT + "application/json, application/yaml"
    names = [c.metadata.name for c in live.core.list_namespaced_config_map(ns).items]
    assert "k8s" not in "".join(names)  # nothing was created


def test_a_patch_of_an_unknown_type_is_415_naming_the_patch_types(
    live: LiveServer, ns: str
) -> None:
    for content_type in (PROTOBUF, "application/json", ""):
        status, _, body = live.request(
            "PATCH",
            f"/api/v1/namespaces/{ns}/configmaps/cm",
            {"data": {"k": "w"}},
            headers={"Content-Type": content_type},
        )
        assert status == 415, content_type
        assert body["message"] == UNKNOWN_FORMAT + (
            "application/json-patch+json, application/merge-patch+json, "
            "application/strategic-merge-patch+json"
        )
    assert live.core.read_namespaced_config_map("cm", ns).data == {"k": "v"}


def test_json_with_parameters_yaml_and_no_content_type_are_decoded(
    live: LiveServer, ns: str
) -> None:
    cases = {
        "application/json; charset=utf-8": b'{"metadata":{"name":"with-charset"}}',
        "application/yaml": b"metadata:\n  name: as-yaml\n",
        "": b'{"metadata":{"name":"untyped"}}',  # an empty Content-Type is JSON
    }
    for content_type, raw in cases.items():
        status, _, body = live.request(
            "POST",
            f"/api/v1/namespaces/{ns}/configmaps",
            raw=raw,
            headers={"Content-Type": content_type},
        )
        assert status == 201, (content_type, body)


def test_an_accept_the_lab_cannot_serve_is_406(live: LiveServer, ns: str) -> None:
    for accept in (PROTOBUF, "text/html", "application/json;as=Unknown;foo=bar"):
        status, _, body = live.request(
            "GET", f"/api/v1/namespaces/{ns}/configmaps", headers={"Accept": accept}
        )
        assert status == 406, accept
        assert body["reason"] == "NotAcceptable"
        assert body["message"] == (
            "only the following media types are accepted: application/json, application/yaml"
        )
    status, _, body = live.request(
        "GET",
        f"/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=1",
        headers={"Accept": "application/yaml"},
    )
    assert status == 406  # YAML has no stream form
    assert (
        body["message"]
        == "only the following media types are accepted: application/json;stream=watch"
    )


def test_json_is_chosen_where_any_clause_allows_it(live: LiveServer, ns: str) -> None:
    for accept in (f"{PROTOBUF}, application/json", f"{PROTOBUF}, */*", "application/*", ""):
        status, headers, body = live.request(
            "GET", f"/api/v1/namespaces/{ns}/configmaps/cm", headers={"Accept": accept}
        )
        assert status == 200, accept
        assert headers["Content-Type"].startswith("application/json")
        assert body["data"] == {"k": "v"}


def test_yaml_first_answers_in_yaml(live: LiveServer, ns: str) -> None:
    status, headers, body = live.request(
        "GET",
        f"/api/v1/namespaces/{ns}/configmaps/cm",
        headers={"Accept": "application/yaml, application/json;q=0.5"},
    )
    assert status == 200
    assert headers["Content-Type"] == "application/yaml"
    document = yaml.safe_load(body)
    assert document["kind"] == "ConfigMap"
    assert document["data"] == {"k": "v"}
