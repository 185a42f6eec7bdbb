"""The plugin's side of per-family parametrization and flaky reporting, run inside pytester with
a faked discovery (no cluster): test IDs per family, localhost checks from the discovered
families, and a pass-on-retry shown as a JUnit property, in the JSON summary and as a line
in the terminal summary (serial and under xdist)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import conformance.plugin as plugin
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.verdicts.failures import FLAKY_PROPERTY

pytest_plugins = ["pytester"]


pytestmark = pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")


def collected_ids(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, families: tuple[int, ...]
) -> list[str]:
    monkeypatch.setattr(
        plugin,
        "discover",
        lambda settings: Discovery(
            nodes=("node-1", "node-2"), family_plan=FamilyPlan(tested=families)
        ),
    )
    result = pytester.runpytest(
        "--pyargs", "conformance", "--collect-only", "-q", "-p", "no:cacheprovider"
    )
    return [line for line in result.stdout.lines if "::" in line]


def ids_of(ids: list[str], check: str) -> list[str]:
    return [i.split("[", 1)[1].rstrip("]") for i in ids if f"::{check}[" in i]


def test_ipv4_only_ids_stay_as_they_were(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = collected_ids(pytester, monkeypatch, (4,))
    snat = ids_of(ids, "test_no_snat")
    assert "tcp-node-1->node-2" in snat
    assert "icmp-node-1->node-1" in snat
    assert len(snat) == 3 * 4  # both ordered pairs and each node with itself, 3 protocols
    # The whole rule: host network to the other node's pods, both ways; full-size packets on
    # every pair; the sandbox on every node.
    assert ids_of(ids, "test_host_to_pod") == [
        f"{proto}-{pair}"
        for proto in ("tcp", "udp", "icmp")
        for pair in ("node-1->node-2", "node-2->node-1")
    ]
    assert ids_of(ids, "test_full_size_packets") == snat
    assert ids_of(ids, "test_sandbox_survives_container_restart") == ["node-1", "node-2"]
    assert ids_of(ids, "test_node_to_pod") == [
        f"{proto}-{node}" for proto in ("tcp", "udp", "icmp") for node in ("node-1", "node-2")
    ]
    # Localhost follows the discovered families: no IPv6 cases to skip on an IPv4 cluster.
    assert ids_of(ids, "test_localhost_between_containers") == [
        f"{proto}-{node}" for proto in ("tcp", "udp") for node in ("node-1", "node-2")
    ]
    assert not [i for i in ids if "ipv4" in i or "ipv6" in i]


def test_ipv6_only_ids_carry_the_family(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = collected_ids(pytester, monkeypatch, (6,))
    assert "ipv6-tcp-node-1->node-2" in ids_of(ids, "test_no_snat")
    assert "ipv6-icmp-node-2" in ids_of(ids, "test_node_to_pod")
    assert ids_of(ids, "test_localhost_between_containers") == [
        f"ipv6-{proto}-{node}" for proto in ("tcp", "udp") for node in ("node-1", "node-2")
    ]
    assert not [i for i in ids if "ipv4" in i]


def test_dual_stack_ids_carry_both_families(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = collected_ids(pytester, monkeypatch, (4, 6))
    snat = ids_of(ids, "test_no_snat")
    assert len(snat) == 2 * 3 * 4
    assert {"ipv4-udp-node-2->node-1", "ipv6-udp-node-2->node-1"} <= set(snat)
    localhost = ids_of(ids, "test_localhost_between_containers")
    assert {"ipv4-tcp-node-1", "ipv6-tcp-node-1"} <= set(localhost)
    assert len(localhost) == 2 * 2 * 2


FLAKY_REASON = "passed on attempt 2 of 3 (first: ETIMEDOUT no answer within 5.0s)"

FLAKY_TESTS = f"""
import pytest

@pytest.mark.parametrize("pair", ["udp-node-1->node-2", "tcp-node-2->node-1"])
def test_no_snat(pair, request):
    # What a conformance check does: the rule property (added by the plugin to conformance
    # modules), and the flaky property when its pair passed only on a retry.
    request.node.user_properties.append(("rule", "pods MUST reach pods"))
    if pair.startswith("udp"):
        request.node.user_properties.append(({FLAKY_PROPERTY!r}, {FLAKY_REASON!r}))

def test_failing_retry_is_not_flaky(request):
    request.node.user_properties.append(("rule", "pods MUST reach pods"))
    request.node.user_properties.append(({FLAKY_PROPERTY!r}, "passed on attempt 2 of 3"))
    pytest.fail("the rule is broken anyway")
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_flaky_pass_is_reported_everywhere(pytester: pytest.Pytester, xdist: bool) -> None:
    pytester.makepyfile(test_pairs=FLAKY_TESTS)
    args = ["-p", "no:cacheprovider", "--junitxml=out/junit.xml"]
    if xdist:
        args += ["-n", "2"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2, failed=1)
    line = f"flaky: test_no_snat[udp-node-1->node-2] {FLAKY_REASON}"
    assert line in result.stdout.str()
    assert "flaky: test_failing_retry_is_not_flaky" not in result.stdout.str()
    summary = json.loads((pytester.path / "out" / "summary.json").read_text())
    assert summary["flaky"] == [
        {"nodeid": "test_pairs.py::test_no_snat[udp-node-1->node-2]", "reason": FLAKY_REASON}
    ]
    junit = ET.parse(pytester.path / "out" / "junit.xml")
    flaky_cases = {
        case.get("name"): prop.get("value")
        for case in junit.iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == FLAKY_PROPERTY and case.find("failure") is None
    }
    assert flaky_cases == {"test_no_snat[udp-node-1->node-2]": FLAKY_REASON}
