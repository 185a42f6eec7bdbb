"""Pure parts of the API server: selectors, patches, watch translation, tables, admission."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netlab.api import admission
from netlab.api.errors import ApiError
from netlab.api.patch import json_patch, merge_patch, strategic_merge_patch
from netlab.api.selectors import labels_match, parse_field_selector, parse_label_selector
from netlab.api.store import Event, Store, TooOld
from netlab.api.tables import wants_table
from netlab.api.watch import translate


def obj(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param("a=b", {"a": "b"}, True, id="equal"),
        pytest.param("a==b", {"a": "c"}, False, id="double-equal-miss"),
        pytest.param("a!=b", {}, True, id="not-equal-absent"),
        pytest.param("a in (b, c)", {"a": "c"}, True, id="in"),
        pytest.param("a notin (b)", {"a": "b"}, False, id="notin"),
        pytest.param("a,!b", {"a": "1"}, True, id="exists-and-absent"),
        pytest.param(
            "app.kubernetes.io/name=probe", {"app.kubernetes.io/name": "probe"}, True, id="prefixed"
        ),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), obj(labels)) is expected


@pytest.mark.parametrize("bad", ["a in (b", "=b", "a=b=c d", "a b", ",", "a=(x)"])
def test_bad_label_selectors_are_400(bad: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_label_selector(bad)
    assert info.value.code == 400


@given(st.text(max_size=40))
def test_label_selector_parser_never_crashes(text: str) -> None:
    code = 200
    try:
        parse_label_selector(text)
    except ApiError as error:  # the only failure allowed: a 400 Status
        code = error.code
    assert code in (200, 400)


def test_field_selectors() -> None:
    assert parse_field_selector("spec.nodeName=node-1,status.phase!=Failed", "pods") == (
        ("spec.nodeName", True, "node-1"),
        ("status.phase", False, "Failed"),
    )
    with pytest.raises(ApiError, match=r"field label not supported: spec\.nope"):
        parse_field_selector("spec.nope=1", "pods")


def test_patches() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }
    target = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}
    patched = strategic_merge_patch(target, {"containers": [{"name": "b", "image": "2"}]})
    assert patched["containers"] == [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]
    deleted = strategic_merge_patch(target, {"containers": [{"name": "a", "$patch": "delete"}]})
    assert [c["name"] for c in deleted["containers"]] == ["b"]
    assert json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}]) == {"a": [1, 2]}
    with pytest.raises(ApiError) as info:
        json_patch({"a": 1}, [{"op": "remove", "path": "/nope"}])
    assert info.value.code == 422


def test_watch_translation_for_selectors() -> None:
    def match(o: dict[str, Any]) -> bool:
        return bool(o["metadata"]["labels"].get("keep"))

    kept, dropped = obj({"keep": "1"}), obj({})
    assert translate(Event(2, "pods", "MODIFIED", dropped, kept), match) == "DELETED"
    assert translate(Event(2, "pods", "MODIFIED", kept, dropped), match) == "ADDED"
    assert translate(Event(2, "pods", "MODIFIED", dropped, dropped), match) is None
    assert translate(Event(2, "pods", "DELETED", kept, kept), match) == "DELETED"


def test_store_history_bound_gives_too_old() -> None:
    store = Store(history_limit=3)
    for i in range(5):
        store.put("configmaps", {"metadata": {"name": f"c{i}", "namespace": "d"}}, created=True)
    with pytest.raises(TooOld):
        store.watch("configmaps", None, 1)
    watcher = store.watch("configmaps", None, store.rv - 2)
    assert watcher.queue.qsize() == 2


def test_wants_table() -> None:
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not wants_table("application/json")
    assert not wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io")


def test_admission_defaults_and_unknown_fields() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    defaulted = admission.default_pod(pod)
    assert defaulted["spec"]["containers"][0]["imagePullPolicy"] == "Always"  # untagged: latest
    assert defaulted["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    odd: dict[str, Any] = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "x", "zz": 1}], "yy": 2},
    }
    assert admission.check_fields("Pod", odd, "Warn") == [
        'unknown field "spec.containers[0].zz"',
        'unknown field "spec.yy"',
    ]
    assert "yy" not in odd["spec"]
    assert "zz" not in odd["spec"]["containers"][0]
    with pytest.raises(ApiError) as info:
        admission.validate(
            "Pod", {"metadata": {"name": "p"}, "spec": {"containers": []}}, label_name=False
        )
    assert info.value.code == 422
    assert info.value.status["details"]["causes"][0]["field"] == "spec.containers"
