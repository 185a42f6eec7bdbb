"""Service discovery: a pod finds a Service by name through the cluster DNS (as CoreDNS's
kubernetes plugin answers) and by the environment variables kubelet sets for the Services that
existed when the pod started.

- every probe pod resolves the Service's name (short, namespace-qualified and fully
  qualified) to its cluster IP, in every family the Service has;
- a headless Service's name resolves to its ready endpoints' IPs;
- the Service's variables are set in the probe pods, created after it.

The lookups run in the pods (the agent's ``resolve``, through the nameservers and search list
kubelet wrote into the pod's resolv.conf, whatever the DNS Service is called) and come from the
run's prefetch. A resolver that does not answer fails. The DNS checks skip only where kubelet
configures no cluster DNS on any tested node (`conformance.kit.cluster.resolvers`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.cluster.resolvers import (
    DNS_BROKEN,
    DNS_SKIP,
    DNS_TEST,
    DNS_UNTESTED,
    DNSPlan,
    plan_dns,
)
from conformance.kit.exchanges.prefetch import ItemAnswers, Step, prefetched_by
from conformance.kit.exchanges.service_targets import facts_of
from conformance.kit.probes.client import address_of_family
from conformance.kit.probes.model import ROLE_PEER, ROLE_PROBE, ProbeMap
from conformance.kit.probes.services import (
    HEADLESS_SERVICE,
    SERVICE,
    env_name,
    service_environment,
    service_names,
)
from conformance.kit.verdicts.failures import fail_rule

#: Seconds one lookup may take in the pod (the resolver's own retries included).
RESOLVE_TIMEOUT = 5.0

NAMES_RULE = "every pod MUST resolve a Service's name to its cluster IP"
HEADLESS_RULE = "every pod MUST resolve a headless Service's name to its ready endpoints' IPs"
ENV_RULE = "a pod MUST get the environment variables of the Services created before it"


def dns_plan(probe_map: ProbeMap, node: str) -> DNSPlan:
    """What the DNS checks do on ``node``, from the resolvers kubelet wrote on every node."""
    return plan_dns(node, facts_of(probe_map).resolvers, probe_map.namespace)


def _lookups(
    params: Mapping[str, Any],
    probe_map: ProbeMap,
    names: list[str],
    rests_on: tuple[str, ...] = (),
) -> list[Step]:
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    return [
        Step(
            name,
            probe.name,
            probe.container().name,
            {"op": "resolve", "name": name, "family": params["family"], "timeout": RESOLVE_TIMEOUT},
            rests_on=rests_on,
        )
        for name in names
    ]


def name_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """The node's probe pod resolves the Service's three names (where it has a cluster DNS)."""
    if probe_map.services is None:
        return []
    plan = dns_plan(probe_map, params["probe_node"])
    if plan.action != DNS_TEST:
        return []
    return _lookups(params, probe_map, list(service_names(probe_map.namespace, plan.domain)))


def headless_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """The node's probe pod resolves the headless Service's name (where it has a cluster DNS)."""
    if probe_map.services is None or dns_plan(probe_map, params["probe_node"]).action != DNS_TEST:
        return []
    peers = tuple(p.name for p in probe_map.of_role(ROLE_PEER))
    return _lookups(params, probe_map, [HEADLESS_SERVICE], rests_on=peers)


def _tested_dns(
    rule: str, probe_map: ProbeMap, node: str, request: pytest.FixtureRequest
) -> DNSPlan:
    """The node's plan when its DNS is to be tested; otherwise skip (no cluster DNS anywhere),
    fail (none on this node while other nodes have one) or could not test."""
    plan = dns_plan(probe_map, node)
    if plan.action == DNS_SKIP:
        pytest.skip(plan.reason)
    if plan.action == DNS_UNTESTED:
        raise CouldNotTest(plan.reason)
    probe = probe_map.get(ROLE_PROBE, node)
    if plan.action == DNS_BROKEN:
        fail_rule(
            rule,
            expected=f"ClusterFirst pods on {node} use the cluster DNS, as on the other nodes",
            observed=plan.reason,
            protocol="DNS",
            pods=[probe.describe()],
            nodes=[node],
        )
    assert plan.action == DNS_TEST, plan
    if plan.resolver is not None:
        request.node.user_properties.append(("netconform.resolver", plan.resolver.describe()))
    return plan


def _judge(
    rule: str,
    answers: ItemAnswers,
    wanted: Mapping[str, list[str]],
    *,
    plan: DNSPlan,
    family: int,
    pod: str,
    node: str,
) -> None:
    """Each name must resolve to exactly its wanted addresses, through the pod's resolver (a
    lookup the resolver never answered is a failure too)."""
    wrong = []
    for name, addresses in wanted.items():
        answer = answers[name]
        got = answer.get("addresses") if answer.get("ok") else None
        if got is None:
            wrong.append(f"{name}: {answer.get('errno') or 'failed'} {answer.get('error')}")
        elif sorted(got) != sorted(addresses):
            wrong.append(f"{name}: {got}")
    if wrong:
        resolver = plan.resolver.describe() if plan.resolver is not None else "unknown"
        fail_rule(
            rule,
            expected="; ".join(f"{n} -> {a}" for n, a in wanted.items()),
            observed="; ".join(wrong),
            protocol=f"DNS (IPv{family} addresses)",
            pods=[pod],
            nodes=[node],
            details=[
                f"the pod's resolver, as kubelet wrote it: {resolver}",
                *([plan.note] if plan.note else []),
            ],
        )


@prefetched_by(name_steps)
def test_service_names_resolve(
    family: int,
    probe_node: str,
    probe_map: ProbeMap,
    answers: ItemAnswers,
    request: pytest.FixtureRequest,
) -> None:
    """A pod on every node MUST resolve a Service's short, namespace-qualified and fully
    qualified names (through the cluster DNS and the search list kubelet wrote into its
    resolv.conf) to the Service's cluster IP of each family the Service has."""
    plan = _tested_dns(NAMES_RULE, probe_map, probe_node, request)
    facts = facts_of(probe_map)
    ip = facts.cluster_ip(SERVICE, family)
    if ip is None:
        pytest.skip(f"Service {SERVICE} has no IPv{family} cluster IP")
    # A pod without an address of the family still resolves its records.
    probe = probe_map.get(ROLE_PROBE, probe_node)
    names = service_names(probe_map.namespace, plan.domain)
    _judge(
        NAMES_RULE,
        answers,
        {name: [ip] for name in names},
        plan=plan,
        family=family,
        pod=probe.describe(),
        node=probe_node,
    )


@prefetched_by(headless_steps)
def test_headless_service_resolves_to_ready_pods(
    family: int,
    probe_node: str,
    probe_map: ProbeMap,
    answers: ItemAnswers,
    request: pytest.FixtureRequest,
) -> None:
    """A pod on every node MUST resolve a headless Service's name to the IPs of its ready
    endpoints (one pod on each node) of each family."""
    plan = _tested_dns(HEADLESS_RULE, probe_map, probe_node, request)
    probe = probe_map.get(ROLE_PROBE, probe_node)
    ready = sorted(
        ip
        for p in probe_map.of_role(ROLE_PEER)
        if (ip := address_of_family(p.pod_ips, family)) is not None
    )
    if not ready:
        pytest.skip(f"no endpoint of {HEADLESS_SERVICE} has an IPv{family} address")
    _judge(
        HEADLESS_RULE,
        answers,
        {HEADLESS_SERVICE: ready},
        plan=plan,
        family=family,
        pod=probe.describe(),
        node=probe_node,
    )


def env_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """The node's probe pod's environment variables named after the Service."""
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    request = {"op": "env", "prefix": env_name(SERVICE) + "_"}
    return [Step("env", probe.name, probe.container().name, request)]


@prefetched_by(env_steps)
def test_service_environment_variables(
    probe_node: str, probe_map: ProbeMap, answers: ItemAnswers
) -> None:
    """A pod created after a Service MUST carry the Service's environment variables
    (``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT``..., and the Docker-link ones) with its
    cluster IP and ports, on every node."""
    facts = facts_of(probe_map)
    ips = facts.cluster_ips.get(SERVICE) or ()
    if not ips:
        raise CouldNotTest(f"Service {SERVICE} has no cluster IP")
    probe = probe_map.get(ROLE_PROBE, probe_node)
    answer = answers["env"]
    variables = answer.get("variables") or {}
    wanted = service_environment(SERVICE, ips[0])
    wrong = {k: variables.get(k) for k, v in wanted.items() if variables.get(k) != v}
    if wrong:
        fail_rule(
            ENV_RULE,
            expected=", ".join(f"{k}={v}" for k, v in wanted.items()),
            observed=", ".join(f"{k}={v}" for k, v in sorted(wrong.items())),
            pods=[probe.describe()],
            nodes=[probe_node],
        )
