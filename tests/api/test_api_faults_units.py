"""API faults without a server: parsing `--api-fault` values, reading requests as the
authorizer does, the seeded dice, and the CLI's listing."""

from __future__ import annotations

import pytest

from netlab.api.faults import (
    API_FAULTS,
    ApiFaultError,
    ForbidRule,
    PodDisruption,
    chance,
    describe_api_faults,
    parse_api_faults,
)
from netlab.api.requestinfo import request_info
from netlab.spec import LabSpec, LabSpecError


def test_defaults_are_a_healthy_server_with_the_controller_lag() -> None:
    faults = parse_api_faults([])
    assert faults.sa_delay == (0.5, 1.0)
    assert not faults.on_requests
    assert not (faults.forbid)
    assert not (faults.disruptions)
    assert not (faults.exec_v4_only)
    assert faults.restart_every == 0
    assert 0.5 <= faults.sa_delay_for("some-namespace") <= 1.0


def test_every_fault_parses() -> None:
    faults = parse_api_faults(
        [
            "seed=7",
            "sa-delay=5",
            "throttle=0.1:3",
            "server-error=0.05",
            "slow=0.2:1.5s",
            "cut-streams=0.1",
            "evict=app.kubernetes.io/name=netconform-probe@10s",
            "delete=app=web,tier!=db@500ms",
            "restart=20s:3s",
            "forbid=create:secrets,list:nodes",
            "forbid=create:pods/exec,list:leases.coordination.k8s.io,*:configmaps",
            "forbid-user=system:serviceaccount:ci:netconform",
            "exec-v4-only",
        ]
    )
    assert faults.seed == 7
    assert faults.sa_delay == (5.0, 5.0)
    assert (faults.throttle, faults.retry_after) == (0.1, 3)
    assert faults.server_error == 0.05
    assert (faults.slow, faults.slow_seconds) == (0.2, 1.5)
    assert faults.cut_streams == 0.1
    assert faults.disruptions == (
        PodDisruption("evict", "app.kubernetes.io/name=netconform-probe", 10.0),
        PodDisruption("delete", "app=web,tier!=db", 0.5),
    )
    assert (faults.restart_every, faults.restart_down) == (20.0, 3.0)
    assert faults.forbid == (
        ForbidRule("create", "secrets"),
        ForbidRule("list", "nodes"),
        ForbidRule("create", "pods", "", "exec"),
        ForbidRule("list", "leases", "coordination.k8s.io"),
        ForbidRule("*", "configmaps"),
    )
    assert [str(rule) for rule in faults.forbid][2:4] == [
        "create:pods/exec",
        "list:leases.coordination.k8s.io",
    ]
    assert faults.forbid_user == "system:serviceaccount:ci:netconform"
    assert faults.exec_v4_only
    assert faults.on_requests
    assert faults.denied("delete", "", "configmaps", "")
    assert not faults.denied("get", "", "secrets", "")


def test_sa_delay_range_and_zero() -> None:
    ranged = parse_api_faults(["sa-delay=2:4", "seed=3"])
    delays = {ranged.sa_delay_for(f"ns-{i}") for i in range(50)}
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert len(delays) > 40  # spread over the range, not one value
    assert parse_api_faults(["sa-delay=0"]).sa_delay_for("x") == 0.0


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("bogus=1", "unknown API fault 'bogus'"),
        ("throttle", "throttle needs a value: throttle=FRACTION[:RETRY_AFTER]"),
        ("throttle=1.5", "throttle: '1.5' is not a number between 0 and 1"),
        ("throttle=0.1:0", "Retry-After '0' is not a whole second"),
        ("slow=0.2", "slow: '0.2' needs two values"),
        ("sa-delay=3:1", "has MAX below SECONDS"),
        ("sa-delay=soon", "'soon' is not a duration"),
        ("evict=app=web", "is not SELECTOR@DELAY"),
        ("evict=app in (web@1s", "evict:"),
        ("restart=0s:3s", "EVERY must be more than 0 s"),
        ("forbid=list", "is not VERB:RESOURCE"),
        ("forbid=LIST:Nodes", "is not VERB:RESOURCE[.GROUP][/SUBRESOURCE]"),
        ("exec-v4-only=yes", "exec-v4-only takes no value"),
        ("seed=-1", "not a non-negative integer"),
    ],
)
def test_bad_values_are_one_line_errors(spec: str, fragment: str) -> None:
    with pytest.raises(ApiFaultError) as error:
        parse_api_faults([spec])
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_lab_spec_checks_its_api_faults() -> None:
    assert LabSpec(api_faults=("throttle=0.1",)).api_faults == ("throttle=0.1",)
    with pytest.raises(LabSpecError, match="unknown API fault 'nope'"):
        LabSpec(api_faults=("nope",))


def test_chance_is_fixed_by_seed_and_key() -> None:
    assert chance(1, "throttle", "GET", "/api/v1/pods", 0) == chance(
        1, "throttle", "GET", "/api/v1/pods", 0
    )
    firsts = [chance(1, "throttle", "GET", "/api/v1/pods", n) for n in range(200)]
    assert all(0.0 <= value < 1.0 for value in firsts)
    assert firsts != [chance(2, "throttle", "GET", "/api/v1/pods", n) for n in range(200)]
    assert 60 < sum(value < 0.5 for value in firsts) < 140


def test_describe_lists_every_fault() -> None:
    text = describe_api_faults()
    lines = text.splitlines()
    assert len(lines) == len(API_FAULTS)
    for syntax, _ in API_FAULTS.values():
        assert any(line.startswith(syntax) for line in lines)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/nodes", {}, ("list", "", "", "nodes", "", "")),
        ("GET", "/api/v1/namespaces/a/pods", {"watch": "1"}, ("watch", "", "a", "pods", "", "")),
        (
            "GET",
            "/api/v1/namespaces/a/pods",
            {"watch": "true", "fieldSelector": "metadata.name=p"},
            ("watch", "", "a", "pods", "", "p"),
        ),
        ("GET", "/api/v1/watch/namespaces/a/pods", {}, ("watch", "", "a", "pods", "", "")),
        ("GET", "/api/v1/namespaces/a", {}, ("get", "", "a", "namespaces", "", "a")),
        (
            "PUT",
            "/api/v1/namespaces/a/status",
            {},
            ("update", "", "a", "namespaces", "status", "a"),
        ),
        ("POST", "/api/v1/namespaces/a/secrets", {}, ("create", "", "a", "secrets", "", "")),
        (
            "POST",
            "/api/v1/namespaces/a/pods/p/eviction",
            {},
            ("create", "", "a", "pods", "eviction", "p"),
        ),
        ("DELETE", "/api/v1/namespaces/a/pods", {}, ("deletecollection", "", "a", "pods", "", "")),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
            {},
            ("get", "coordination.k8s.io", "a", "leases", "", "l"),
        ),
        (
            "GET",
            "/apis/crd.projectcalico.org/v1/ippools",
            {},
            ("list", "crd.projectcalico.org", "", "ippools", "", ""),
        ),
    ],
)
def test_request_info_reads_urls_as_kube_apiserver(
    method: str, path: str, query: dict[str, str], expected: tuple[str, ...]
) -> None:
    info = request_info(method, path, query, {})
    assert info.is_resource
    assert (
        info.verb,
        info.group,
        info.namespace,
        info.resource,
        info.subresource,
        info.name,
    ) == expected


def test_request_info_exec_upgrade_and_non_resource_paths() -> None:
    upgrade = request_info("GET", "/api/v1/namespaces/a/pods/p/exec", {}, {"Upgrade": "websocket"})
    assert upgrade.verbs_checked == ("get", "create")  # Kubernetes 1.31 asks for both
    assert upgrade.long_running
    post = request_info("POST", "/api/v1/namespaces/a/pods/p/exec", {}, {})
    assert post.verbs_checked == ("create",)
    watch = request_info("GET", "/api/v1/pods", {"watch": "1"}, {})
    assert watch.long_running
    assert watch.reads
    for path in ("/version", "/api", "/apis", "/openapi/v3", "/healthz"):
        info = request_info("GET", path, {}, {})
        assert not info.is_resource
        assert info.verb == "get"
