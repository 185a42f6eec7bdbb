"""Runs made up for the report's unit tests: check results with the places the plugin records,
and whole summaries as `conformance.kit.run.session.RunReporter` writes them; and the facts of a
small cluster as a deployment records them (`DEPLOYED_FACTS`)."""

from __future__ import annotations

from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any

from conformance.kit.base.settings import DEFAULT_PROBE_IMAGE
from conformance.kit.cluster.facts import ClusterFacts
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.nodes import Exclusion
from conformance.kit.reporting.matrices import build_matrices
from conformance.kit.reporting.results import CheckResult, build_summary, exit_meaning
from conformance.kit.reporting.rules import Coverage, summarize_rules, verdict
from conformance.kit.verdicts.failures import Place, RuleFailure, could_not_test_text

NO_SNAT_RULE = "A pod MUST reach a pod on every node without NAT."
NODE_TO_POD_RULE = "The host network of a node MUST reach every pod on that node."
LOCALHOST_RULE = "Containers of one pod MUST reach each other over localhost."
FAMILY_RULE = "Where --ip-family requires a family, every probe pod MUST have an IP of it."

#: Two of three nodes tested, IPv4, no service range found: the deployment tests' cluster.
DEPLOYED_FACTS = ClusterFacts(
    server_version="v1.33.1",
    node_count=3,
    nodes_tested=("n1", "n2"),
    pod_cidrs=("n1=10.244.0.0/24",),
    service_cidr=None,
    ip_families=("ipv4",),
    probe_image=DEFAULT_PROBE_IMAGE,
)


def facts(nodes: Sequence[str]) -> ClusterFacts:
    return ClusterFacts(
        server_version="v1.31.0",
        node_count=len(nodes) + 1,
        nodes_tested=tuple(nodes),
        pod_cidrs=tuple(f"{n}=10.244.{i}.0/24" for i, n in enumerate(nodes)),
        service_cidr="10.96.0.0/12",
        ip_families=("ipv4",),
        probe_image="nicolaka/netshoot:v0.13",
        cni="Cilium",
        cni_evidence="DaemonSet kube-system/cilium, image quay.io/cilium/cilium:v1.15.1",
    )


def snat_failure(src: str, dst: str, proto: str) -> RuleFailure:
    """The judge's failure of a no-SNAT pair under the ``snat-cross-node`` fault."""
    return RuleFailure(
        rule="pods MUST reach pods without NAT",
        expected="the destination sees only the source pod's IP",
        observed=f"listener saw source ['172.18.0.{src[-1]}'] from {src} to {dst} over {proto}",
        protocol=f"{proto} over IPv4",
        pods=(f"probe-{src}", f"probe-{dst}"),
        nodes=(src, dst),
    )


def untested(cause: str, rule: str = NO_SNAT_RULE) -> RuleFailure:
    """The failure the plugin attaches to a check that could not test."""
    return RuleFailure(rule=rule, observed=could_not_test_text(cause))


def pair(
    check: str,
    proto: str,
    src: str,
    dst: str,
    outcome: str = "passed",
    *,
    family: str = "ipv4",
    kind: str = "pod",
    failure: RuleFailure | None = None,
    rule: str = NO_SNAT_RULE,
) -> CheckResult:
    """A pair check's result, as the collector merges it (place from its JUnit properties);
    a failed one fails as under the ``snat-cross-node`` fault unless ``failure`` says how, its
    message the failure's text (an error's with ``[setup]`` before it)."""
    module = {"test_no_snat": "test_no_snat", "test_node_to_pod": "test_node_to_pod"}.get(
        check, check
    )
    prefix = "" if family == "ipv4" else f"{family}-"
    ident = f"{prefix}{proto}-{src}->{dst}" if src != dst or kind == "pod" else f"{proto}-{src}"
    if outcome == "failed" and failure is None:
        failure = snat_failure(src, dst, proto)
    message = None
    if failure is not None:
        text = failure.text() if failure.expected is not None else failure.observed
        message = text if outcome == "failed" else f"[setup] {text}"
    return CheckResult(
        nodeid=f"conformance/{module}.py::{check}[{ident}]",
        outcome=outcome,
        duration=0.01,
        rule=rule,
        message=message,
        place=Place(
            check=check,
            family=family,
            protocol=proto,
            source=src,
            destination=dst,
            source_kind=kind,
        ),
        attempts=1,
        losses=0,
        failure=failure,
    )


def node_check(check: str, node: str, outcome: str = "passed", **kwargs: Any) -> CheckResult:
    """A per-node check's result."""
    return CheckResult(
        nodeid=f"conformance/test_localhost.py::{check}[{node}]",
        outcome=outcome,
        duration=0.01,
        rule=kwargs.pop("rule", LOCALHOST_RULE),
        place=Place(check=check, node=node),
        **kwargs,
    )


def no_snat_results(
    nodes: Sequence[str], broken: bool, protocols: Sequence[str] = ("tcp", "udp", "icmp")
) -> list[CheckResult]:
    """``test_no_snat`` over every ordered pair and same-node; cross-node pairs fail when
    ``broken`` (as under the ``snat-cross-node`` fault)."""
    return [
        pair(
            "test_no_snat",
            proto,
            src,
            dst,
            "failed" if broken and src != dst else "passed",
        )
        for proto in protocols
        for src in nodes
        for dst in nodes
    ]


def run_results(nodes: Sequence[str], *, broken: bool, skipped: bool = True) -> list[CheckResult]:
    """A small whole run: no-SNAT pairs, node-to-pod from each host network, a per-node
    check, and (with ``skipped``) a skipped check."""
    results = no_snat_results(nodes, broken)
    results += [
        pair("test_node_to_pod", proto, n, n, kind="host", rule=NODE_TO_POD_RULE)
        for proto in ("tcp", "udp", "icmp")
        for n in nodes
    ]
    results += [node_check("test_localhost_between_containers", n) for n in nodes]
    if not skipped:
        return results
    results.append(
        CheckResult(
            nodeid="conformance/test_pod_ips.py::test_required_family_on_every_pod_and_node[all]",
            outcome="skipped",
            duration=0.0,
            rule=FAMILY_RULE,
            place=Place(check="test_required_family_on_every_pod_and_node", family="ipv4"),
            reason="IPv4 is not required (--ip-family auto follows the cluster)",
        )
    )
    return results


def summary_of(
    results: Sequence[CheckResult],
    nodes: Sequence[str],
    *,
    flaky: dict[str, str] | None = None,
    exitstatus: int = 0,
    dump: str | None = "namespace netconform-r1\npod probe-node-1 node=node-1 phase=Running",
    excluded: dict[str, Exclusion] | None = None,
) -> dict[str, Any]:
    """The summary a run with these results writes (the keys `RunReporter` and `end_run` add
    to `build_summary`'s)."""
    flaky = flaky or {}
    excluded = excluded or {}
    summary = build_summary(
        results, facts=facts(nodes), flaky=flaky, session_duration=42.5, generated_at=0.0
    )
    summary["exitstatus"] = exitstatus
    summary["exit_meaning"] = exit_meaning(exitstatus)
    rules = summarize_rules(results, flaky)
    summary["rules"] = [r.to_dict() for r in rules]
    families = FamilyPlan(tested=(4,), required=(4,), declared={"4": ("node podCIDRs",)})
    summary["verdict"] = verdict(
        rules, Coverage(nodes=tuple(nodes), left_out=excluded, families=families)
    ).to_dict()
    summary["families"] = {**families.to_dict(), "narrowed": []}
    summary["nodes"] = {
        "tested": list(nodes),
        "left_out": {n: why.to_dict() for n, why in excluded.items()},
        "unaccounted": sorted(n for n, why in excluded.items() if not why.narrowed),
    }
    summary["matrices"] = [m.to_dict() for m in build_matrices(results, flaky, nodes)]
    summary["pairs"] = {
        "mode": "auto",
        "sample": None,
        "seed": 7,
        "checked": len(nodes) * (len(nodes) - 1),
        "possible": len(nodes) * (len(nodes) - 1),
        "description": f"every ordered node pair of {len(nodes)} nodes",
    }
    summary["excluded_nodes"] = {n: why.reason for n, why in excluded.items()}
    summary["namespace_dump"] = (
        {"file": "netconform-r1.txt", "text": dump} if dump is not None else None
    )
    summary["run"] = {
        "run_id": "r1",
        "namespace": "netconform-r1",
        "deployment": "ready",
        "deployment_error": None,
        "deployment_seconds": 7.5,
    }
    return summary


class Elements(HTMLParser):
    """Every element of a page with its attributes, and the page's text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        """Attributes of the ``tag`` elements whose attributes include ``wanted``
        (``data_status`` stands for ``data-status``)."""
        names = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [
            attrs
            for t, attrs in self.found
            if t == tag and all(attrs.get(k) == v for k, v in names.items())
        ]

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.found if "id" in attrs}
