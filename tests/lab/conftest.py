"""Shared fixtures for the lab tests (root only): unique lab names, a leak detector, the network
kit of small pods and probes (``network_kit.py``) and built lab topologies.

Lab names made here start with ``ta`` (or ``$NETLAB_TEST_LAB_PREFIX``, two letters) so that
other engineers' concurrent lab tests (other prefixes) never collide with these.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from network_kit import NetworkKit
from pyroute2 import netns as pyroute2_netns

from netlab.dataplane.cleanup import sweep
from netlab.dataplane.netfaults import apply_lab_faults
from netlab.dataplane.topology import build_topology, destroy_topology
from netlab.spec import STATE_ROOT, LabSpec

TEST_LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "ta")
LAB_OF_NETNS = re.compile(r"^netlab-(.+)-(fabric|outside|node-[0-9]+|pod-.+)$")

if os.geteuid() != 0:
    pytest.skip("lab tests create network namespaces: run them as root", allow_module_level=True)


def new_lab_name() -> str:
    """``ta`` + 6 random characters: unique per call, valid, and never a prefix clash."""
    return TEST_LAB_PREFIX + secrets.token_hex(3)


def leftovers(lab_prefix: str, state_root: Path = STATE_ROOT) -> list[str]:
    """Namespaces and state dirs of every lab whose name starts with ``lab_prefix``."""
    found = [name for name in pyroute2_netns.listnetns() if name.startswith(f"netlab-{lab_prefix}")]
    if state_root.is_dir():
        found += [str(path) for path in state_root.iterdir() if path.name.startswith(lab_prefix)]
    return sorted(found)


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
