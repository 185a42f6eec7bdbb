"""The Service checks' deployment (`conformance.kit.probes.service_deployment`) against a fake API:
the Services and what the cluster made of them, a cluster refusing NodePorts, the host port
choice, and a hostPort probe refused for a port conflict getting another port."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ProbeDeploymentError
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.probes import service_deployment as sd
from conformance.kit.probes.services import (
    EMPTY_SERVICE,
    HEADLESS_SERVICE,
    HOST_PORT_RANGE,
    NODEPORT_SERVICE,
    SERVICE,
)

NODES = ("node-1", "node-2")


def api_error(status: int, message: str) -> ApiException:
    error = ApiException(status=status, reason="refused")
    error.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return error


class ServicesCore:
    """Creates Services as an API server would (cluster IPs, node ports); refuses NodePorts
    when told. Reading any other Service fails the test: the suite learns the cluster DNS from
    the pods' resolvers, never from a Service's name."""

    def __init__(self, *, refuse_node_ports: ApiException | None = None) -> None:
        self.created: list[client.V1Service] = []
        self.refuse_node_ports = refuse_node_ports

    def create_namespaced_service(
        self, namespace: str, body: client.V1Service, **_: Any
    ) -> client.V1Service:
        if body.spec.type == "NodePort" and self.refuse_node_ports is not None:
            raise self.refuse_node_ports
        self.created.append(body)
        spec = body.spec
        headless = spec.cluster_ip == "None"
        ip = "None" if headless else f"10.96.0.{10 + len(self.created)}"
        ports = [
            client.V1ServicePort(
                name=p.name,
                port=p.port,
                protocol=p.protocol,
                node_port=30000 + p.port if spec.type == "NodePort" else None,
            )
            for p in spec.ports
        ]
        made = client.V1ServiceSpec(
            cluster_ip=ip, cluster_ips=[ip], ports=ports, type=spec.type, selector=spec.selector
        )
        return client.V1Service(metadata=body.metadata, spec=made)


def test_services_are_created_and_read_back() -> None:
    core = ServicesCore()
    facts = sd.create_services(core, "ns", "run", Timeouts())  # type: ignore[arg-type]
    assert [s.metadata.name for s in core.created] == [
        SERVICE,
        HEADLESS_SERVICE,
        EMPTY_SERVICE,
        NODEPORT_SERVICE,
    ]
    assert facts.cluster_ip(SERVICE, 4) == "10.96.0.11"
    assert facts.cluster_ips[HEADLESS_SERVICE] == ()
    assert facts.node_ports == {"tcp": 30080, "udp": 30081}
    assert facts.node_port_skip is None
    assert facts.resolvers == {}
    assert all(s.metadata.labels["netconform/run"] == "run" for s in core.created)


def test_a_cluster_refusing_node_ports_skips_those_checks() -> None:
    refusal = api_error(
        403, 'admission webhook "policy" denied the request: NodePorts are not allowed'
    )
    core = ServicesCore(refuse_node_ports=refusal)
    facts = sd.create_services(core, "ns", "run", Timeouts())  # type: ignore[arg-type]
    assert facts.node_ports == {}
    assert facts.node_port_skip is not None
    assert "NodePorts are not allowed" in facts.node_port_skip


def test_a_missing_permission_is_no_reason_to_skip() -> None:
    rbac = api_error(
        403,
        'services is forbidden: User "u" cannot create resource "services" in API group "" in '
        'the namespace "ns"',
    )
    assert sd.refused_by_policy(rbac) is None
    assert sd.refused_by_policy(api_error(422, "Service is invalid")) is not None
    core = ServicesCore(refuse_node_ports=rbac)
    with pytest.raises(ProbeDeploymentError, match="cannot create resource"):
        sd.create_services(core, "ns", "run", Timeouts())  # type: ignore[arg-type]


@given(seed=st.integers(0, 2**32), taken=st.lists(st.integers(20000, 29998), max_size=20))
def test_host_ports_are_even_and_in_range(seed: int, taken: list[int]) -> None:
    port = sd.choose_host_port(random.Random(seed), taken)
    low, high = HOST_PORT_RANGE
    assert low <= port <= high
    assert port % 2 == 0
    assert port not in taken


def hostport_pod(
    name: str, node: str, phase: str, *, ready: bool = False, reason: str = "", message: str = ""
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(containers=[], node_name=node),
        status=client.V1PodStatus(
            phase=phase,
            reason=reason or None,
            message=message or None,
            conditions=[client.V1PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )


KUBELET_REFUSAL = (
    "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the "
    "requested pod ports"
)


def test_port_conflict_is_kubelets_refusal_only() -> None:
    refused = hostport_pod("p", "n", "Failed", reason="NodePorts", message=KUBELET_REFUSAL)
    assert sd.port_conflict(refused) == f"NodePorts: {KUBELET_REFUSAL}"
    assert sd.port_conflict(hostport_pod("p", "n", "Failed", reason="Evicted")) is None
    assert sd.port_conflict(hostport_pod("p", "n", "Running", ready=True)) is None


class HostPortCore:
    """Pods as kubelet admits them: on node-2 the first host port is taken by someone else."""

    def __init__(self) -> None:
        self.pods: dict[str, client.V1Pod] = {}
        self.ports: dict[str, int] = {}
        self.first_port: int | None = None

    def create_namespaced_pod(self, namespace: str, body: client.V1Pod, **_: Any) -> client.V1Pod:
        name, node = body.metadata.name, body.spec.node_name
        port = body.spec.containers[0].ports[0].host_port
        self.first_port = self.first_port or port
        self.ports[name] = port
        if node == "node-2" and port == self.first_port:
            pod = hostport_pod(name, node, "Failed", reason="NodePorts", message=KUBELET_REFUSAL)
        else:
            pod = hostport_pod(name, node, "Running", ready=True)
        self.pods[name] = pod
        return pod

    def list_namespaced_pod(self, namespace: str, **_: Any) -> client.V1PodList:
        return client.V1PodList(
            items=list(self.pods.values()), metadata=client.V1ListMeta(resource_version="1")
        )


def test_a_refused_host_port_is_chosen_again_on_that_node() -> None:
    core = HostPortCore()
    settings = Settings(kubeconfig=None, context=None)
    started = sd.start_hostport_probes(
        core,
        "ns",
        "run",
        NODES,
        settings,
        random.Random(1),  # type: ignore[arg-type]
    )
    done, ready = sd.wait_for_hostport_probes(
        core,
        "ns",
        "run",
        started,
        settings,
        random.Random(2),  # type: ignore[arg-type]
    )
    assert done.attempt == 1
    assert list(done.refused) == ["hostport-node-2"]
    probe_1, ports_1 = done.probes["node-1"]
    probe_2, ports_2 = done.probes["node-2"]
    assert (probe_1.name, probe_2.name) == ("hostport-node-1", "hostport-node-2-1")
    assert ports_2 != ports_1
    assert ports_2[1] == ports_2[0] + 1
    assert core.ports["hostport-node-2-1"] == ports_2[0]
    assert sorted(ready) == ["hostport-node-1", "hostport-node-2-1"]


def test_a_port_refused_every_time_ends_the_deployment() -> None:
    core = HostPortCore()
    core.create_namespaced_pod = lambda namespace, body, **_: core.pods.setdefault(  # type: ignore[method-assign]
        body.metadata.name,
        hostport_pod(
            body.metadata.name,
            body.spec.node_name,
            "Failed",
            reason="NodePorts",
            message=KUBELET_REFUSAL,
        ),
    )
    settings = Settings(kubeconfig=None, context=None)
    started = sd.start_hostport_probes(core, "ns", "run", NODES, settings)  # type: ignore[arg-type]
    with pytest.raises(
        ProbeDeploymentError,
        match=f"refused the hostPort probes' ports {sd.HOST_PORT_ATTEMPTS} times",
    ):
        sd.wait_for_hostport_probes(core, "ns", "run", started, settings)  # type: ignore[arg-type]
