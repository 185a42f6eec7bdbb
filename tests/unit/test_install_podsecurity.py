"""The probe pods ask for no more than they need: never privileged, every capability dropped,
NET_RAW (as root, to keep it) only for the roles whose checks need it, non-root elsewhere,
requests and limits, seccomp RuntimeDefault; and the lab's Pod Security admission refuses
them under baseline with the real plugin's words, while the sandbox pod meets restricted."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.kit.base.settings import Settings
from conformance.kit.probes import model as probes
from conformance.kit.probes import podspecs
from netlab.api.admission import check_pod_security
from netlab.api.errors import ApiError


def spec_of(role: str) -> dict[str, Any]:
    probe = next(p for p in probes.planned_probes(["node-1"]) if p.role == role)
    pod = podspecs.pod_spec(probe, "ns", "run", Settings(kubeconfig=None, context=None))
    spec: dict[str, Any] = podspecs.to_manifest(pod)["spec"]
    return spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("role", probes.ROLES)
def test_least_privilege_per_role(role: str) -> None:
    spec = spec_of(role)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(spec):
        security = container["securityContext"]
        assert security["privileged"] is False
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        agent = container["name"] != "seed"
        if agent and role in podspecs.NET_RAW_ROLES:
            assert security["capabilities"]["add"] == ["NET_RAW"]
            assert security["runAsUser"] == 0
        else:
            assert "add" not in security["capabilities"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == podspecs.NON_ROOT_USER
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_only_the_host_probe_uses_the_host_network() -> None:
    assert [role for role in probes.ROLES if spec_of(role).get("hostNetwork")] == [
        probes.ROLE_HOSTPROBE
    ]


def namespace(level: str) -> dict[str, Any]:
    return {"metadata": {"name": "ns", "labels": {"pod-security.kubernetes.io/enforce": level}}}


def test_baseline_refuses_the_host_probe_in_pod_security_words() -> None:
    with pytest.raises(ApiError) as refused:
        check_pod_security(namespace("baseline"), {"spec": spec_of(probes.ROLE_HOSTPROBE)}, "hp")
    assert refused.value.code == 403
    assert str(refused.value) == (
        'pods "hp" is forbidden: violates PodSecurity "baseline:latest": non-default '
        'capabilities (container "agent" must not include "NET_RAW" in '
        "securityContext.capabilities.add), host namespaces (hostNetwork=true)"
    )


def test_restricted_admits_the_sandbox_pod_and_names_the_probe_pods_faults() -> None:
    check_pod_security(namespace("restricted"), {"spec": spec_of(probes.ROLE_SANDBOX)}, "sb")
    check_pod_security(namespace("privileged"), {"spec": spec_of(probes.ROLE_PROBE)}, "p")
    with pytest.raises(ApiError) as refused:
        check_pod_security(namespace("restricted"), {"spec": spec_of(probes.ROLE_PROBE)}, "p")
    message = str(refused.value)
    assert (
        'violates PodSecurity "restricted:latest": unrestricted capabilities (containers' in message
    )
    assert 'must not include "NET_RAW" in securityContext.capabilities.add)' in message
    assert 'runAsUser=0 (containers "a", "b" must not set runAsUser=0)' in message
    assert "runAsNonRoot != true (pod or containers" in message
