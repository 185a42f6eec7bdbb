"""Shared fixtures for the lab tests (root only: every module here is marked ``needs_lab``):
unique lab names with a leak detector (``tests/support/lab_names.py``), the network kit of
small pods and probes (``network_kit.py``), built lab topologies and a probe agent in each of
two namespaces (``netns_pair``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_namespaces import AGENT_PYTHONS, NamespacePair, namespace_pair
from lab_names import LAB_OF_NETNS, leftovers, new_lab_name
from network_kit import NetworkKit
from running_agents import workdir  # noqa: F401  (the agent tests' shared fixture)

from netlab.dataplane.cleanup import sweep
from netlab.dataplane.netfaults import apply_lab_faults
from netlab.dataplane.topology import build_topology, destroy_topology
from netlab.spec import LabSpec


@pytest.fixture(autouse=True)
def no_lab_leaks() -> Iterator[list[str]]:
    """Leak detector: no namespace or state dir of a lab this test named survives it.

    Only names handed out to this test are checked (labs named after them included), so
    concurrent tests and other engineers' labs never trip it. Leaks are swept, then reported.
    """
    used: list[str] = []
    yield used
    leaked = {name: leftovers(name) for name in used if leftovers(name)}
    for found in leaked.values():
        for entry in found:
            owner = LAB_OF_NETNS.match(entry)
            sweep(owner.group(1) if owner else Path(entry).name)  # keep the machine clean
    assert not leaked, f"the test left lab resources behind: {leaked}"


@pytest.fixture
def lab_names(no_lab_leaks: list[str]) -> Callable[[], str]:
    """Hands out fresh lab names (``ta`` + 6 hex digits), each checked for leaks afterwards."""

    def make() -> str:
        no_lab_leaks.append(new_lab_name())
        return no_lab_leaks[-1]

    return make


@pytest.fixture
def lab_name(lab_names: Callable[[], str]) -> str:
    return lab_names()


@pytest.fixture
def network_kit() -> Iterator[NetworkKit]:
    kit = NetworkKit()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture
def built_lab(network_kit: NetworkKit) -> Iterator[Callable[[LabSpec], LabSpec]]:
    """Builds a lab's topology (and its network faults); after the test the echo servers stop,
    the topology is destroyed and the lab is swept (pod namespaces go with it)."""
    built: list[LabSpec] = []

    def build(spec: LabSpec) -> LabSpec:
        build_topology(spec)
        built.append(spec)
        apply_lab_faults(spec)
        return spec

    try:
        yield build
    finally:
        network_kit.close()
        for spec in built:
            destroy_topology(spec)
            sweep(spec.name, spec.state_root)


@pytest.fixture(scope="module", params=AGENT_PYTHONS)
def netns_pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NamespacePair]:
    """Two namespaces joined by a veth pair, a probe agent in each, run by each interpreter a
    probe image may have (``tests/support/agent_namespaces.py``)."""
    with namespace_pair(tmp_path_factory.mktemp("agent"), request.param) as pair:
        yield pair
