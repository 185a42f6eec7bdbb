"""Containers of one pod share its volumes: an emptyDir (disk and medium Memory) mounted at
different paths in each container holds the same files for both.

The agent requests come from the run's staged prefetch (`conformance.kit.exchanges.prefetch`): every
write in stage 0, every read in stage 1, one batch per container per stage."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pytest

from conformance.kit.exchanges.prefetch import ItemAnswers, Step, prefetched_by
from conformance.kit.probes.client import require_ok
from conformance.kit.probes.model import ROLE_PROBE, ProbeMap
from conformance.kit.probes.podspecs import (
    MEMORY_VOLUME,
    MOUNT_PATHS,
    SCRATCH_VOLUME,
    SEED_CONTENT,
    SEED_FILE,
)
from conformance.kit.verdicts.failures import fail_rule

SIZE = 1 << 20  # 1 MiB
CONTAINERS = ("a", "b")


def volume_paths(params: Mapping[str, Any], nonce: str) -> tuple[str, str]:
    """Where the writer writes and the reader reads the item's file."""
    volume, writer, reader = params["volume"], params["writer"], params["reader"]
    name = f"netconform-{nonce}.bin"
    return f"{MOUNT_PATHS[writer][volume]}/{name}", f"{MOUNT_PATHS[reader][volume]}/{name}"


def volume_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """Stage 0: the writer writes a file named by the nonce; stage 1: the reader reads it."""
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    write_path, read_path = volume_paths(params, nonce)
    return [
        Step(
            "write",
            probe.name,
            params["writer"],
            {"op": "write_file", "path": write_path, "size": SIZE, "seed": nonce},
            stage=0,
        ),
        Step("read", probe.name, params["reader"], {"op": "read_file", "path": read_path}, stage=1),
    ]


@pytest.mark.parametrize(("writer", "reader"), [("a", "b"), ("b", "a")], ids=["a->b", "b->a"])
@pytest.mark.parametrize("volume", [SCRATCH_VOLUME, MEMORY_VOLUME])
@prefetched_by(volume_steps)
def test_volume_shared_between_containers(
    volume: str,
    writer: str,
    reader: str,
    probe_node: str,
    probe_map: ProbeMap,
    answers: ItemAnswers,
) -> None:
    """A file written by one container into a shared emptyDir volume (disk or medium Memory)
    MUST be read back, byte for byte, by the other container at its own mount path."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    write_path, read_path = volume_paths(
        {"volume": volume, "writer": writer, "reader": reader}, answers.nonce
    )
    written = require_ok(
        answers["write"], pod=probe.name, container=writer, what=f"write {write_path}"
    )
    read = answers["read"]
    if not read.get("ok") or read.get("sha256") != written.get("sha256"):
        fail_rule(
            "containers of one pod MUST share its volumes",
            expected=f"{reader}:{read_path} has {SIZE} bytes with sha256 {written.get('sha256')}"
            f" (written by {writer} at {write_path})",
            observed=f"read answered {read}",
            pods=[probe.describe()],
            nodes=[probe_node],
            details=[f"volume {volume}"],
        )


def seed_path(container: str) -> str:
    return f"{MOUNT_PATHS[container][SCRATCH_VOLUME]}/{SEED_FILE}"


def seed_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """Both containers read the file the init container wrote."""
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    return [Step(c, probe.name, c, {"op": "read_file", "path": seed_path(c)}) for c in CONTAINERS]


@prefetched_by(seed_steps)
def test_init_container_file_seen_by_both(
    probe_node: str, probe_map: ProbeMap, answers: ItemAnswers
) -> None:
    """A file an init container wrote into an emptyDir volume MUST be seen by every container
    of the pod that mounts the volume."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    expected = hashlib.sha256(SEED_CONTENT.encode()).hexdigest()
    failures = []
    for container in CONTAINERS:
        answer = answers[container]
        if not answer.get("ok") or answer.get("sha256") != expected:
            failures.append(f"{container}:{seed_path(container)}: {answer}")
    if failures:
        fail_rule(
            "containers of one pod MUST see files its init containers wrote to shared volumes",
            expected=f"{SEED_FILE} with sha256 {expected} in a and b",
            observed="; ".join(failures),
            pods=[probe.describe()],
            nodes=[probe_node],
        )
