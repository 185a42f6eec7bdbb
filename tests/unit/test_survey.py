"""The report's cluster facts (`conformance.kit.cluster.survey.cluster_facts`) name the Service
range the podCIDR check finds: one finder (`ServiceRangeFinder`) for both, per tested family,
whichever source knew it (a cluster without ServiceCIDR objects used to read "unknown")."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from kubernetes import client

from conformance.kit.base.settings import Settings
from conformance.kit.cluster import survey
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.ipranges import ServiceRange

RANGES = {4: ("10.96.0.0/12",), 6: ("fd00:10:96::/112",)}


class Finder:
    """Stands in for `ServiceRangeFinder`: the kubeadm-config knows IPv4's range only."""

    asked: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, api: Any, namespace: str, timeouts: Any) -> None:
        self.namespace = namespace

    def range_of(self, family: int) -> ServiceRange:
        Finder.asked.append((self.namespace, family))
        if family == 4:
            return ServiceRange(4, RANGES[4], "ConfigMap kube-system/kubeadm-config")
        return ServiceRange(6)


class Version:
    def __init__(self, api: Any) -> None:
        pass

    def get_code(self, **_: Any) -> Any:
        return type("Info", (), {"git_version": "v1.31.0"})()


@pytest.fixture
def facts_of(monkeypatch: pytest.MonkeyPatch) -> Any:
    Finder.asked = []
    monkeypatch.setattr(survey, "ServiceRangeFinder", Finder)
    monkeypatch.setattr(survey.client, "VersionApi", Version)
    monkeypatch.setattr(survey, "detect_cni", lambda api, timeouts: ("unknown", "none"))

    def facts(families: tuple[int, ...]) -> Any:
        node = client.V1Node(metadata=client.V1ObjectMeta(name="node-1"))
        discovery = Discovery(nodes=("node-1",), family_plan=FamilyPlan(tested=families))
        return survey.cluster_facts(
            None, [node], discovery, Settings(kubeconfig=None, context=None), "netconform-run"
        )  # type: ignore[arg-type]

    return facts


def test_the_service_range_comes_from_the_podcidr_checks_finder(facts_of: Any) -> None:
    assert facts_of((4,)).service_cidr == "10.96.0.0/12"
    assert Finder.asked == [("netconform-run", 4)]


def test_a_family_without_a_known_range_adds_nothing(facts_of: Any) -> None:
    assert facts_of((4, 6)).service_cidr == "10.96.0.0/12"
    assert facts_of((6,)).service_cidr is None
