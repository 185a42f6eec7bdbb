"""Containers of one pod share its volumes: an emptyDir (disk and medium Memory) mounted at
different paths in each container holds the same files for both."""

from __future__ import annotations

import hashlib

import pytest

from conformance.kit.agent_client import AgentClient, require_ok
from conformance.kit.probes import (
    MEMORY_VOLUME,
    MOUNT_PATHS,
    ROLE_PROBE,
    SCRATCH_VOLUME,
    SEED_CONTENT,
    SEED_FILE,
    ProbeMap,
)
from conformance.kit.report import format_rule_failure

SIZE = 1 << 20  # 1 MiB


@pytest.mark.parametrize(("writer", "reader"), [("a", "b"), ("b", "a")], ids=["a->b", "b->a"])
@pytest.mark.parametrize("volume", [SCRATCH_VOLUME, MEMORY_VOLUME])
def test_volume_shared_between_containers(
    volume: str,
    writer: str,
    reader: str,
    probe_node: str,
    probe_map: ProbeMap,
    agents: AgentClient,
    nonce: str,
) -> None:
    """A file written by one container into a shared emptyDir volume (disk or medium Memory)
    MUST be read back, byte for byte, by the other container at its own mount path."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    name = f"netconform-{nonce}.bin"
    write_path = f"{MOUNT_PATHS[writer][volume]}/{name}"
    read_path = f"{MOUNT_PATHS[reader][volume]}/{name}"
    written = require_ok(
        agents.call_one(
            probe.name,
            writer,
            {"op": "write_file", "path": write_path, "size": SIZE, "seed": nonce},
        ),
        pod=probe.name,
        container=writer,
        what=f"write {write_path}",
    )
    read = agents.call_one(probe.name, reader, {"op": "read_file", "path": read_path})
    if not read.get("ok") or read.get("sha256") != written.get("sha256"):
        pytest.fail(
            format_rule_failure(
                "containers of one pod MUST share its volumes",
                expected=f"{reader}:{read_path} has {SIZE} bytes with sha256 {written.get('sha256')}"
                f" (written by {writer} at {write_path})",
                observed=f"read answered {read}",
                pods=[probe.describe()],
                nodes=[probe_node],
                details=[f"volume {volume}"],
            ),
            pytrace=False,
        )


def test_init_container_file_seen_by_both(
    probe_node: str, probe_map: ProbeMap, agents: AgentClient
) -> None:
    """A file an init container wrote into an emptyDir volume MUST be seen by every container
    of the pod that mounts the volume."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    expected = hashlib.sha256(SEED_CONTENT.encode()).hexdigest()
    failures = []
    for container in ("a", "b"):
        path = f"{MOUNT_PATHS[container][SCRATCH_VOLUME]}/{SEED_FILE}"
        answer = agents.call_one(probe.name, container, {"op": "read_file", "path": path})
        if not answer.get("ok") or answer.get("sha256") != expected:
            failures.append(f"{container}:{path}: {answer}")
    if failures:
        pytest.fail(
            format_rule_failure(
                "containers of one pod MUST see files its init containers wrote to shared volumes",
                expected=f"{SEED_FILE} with sha256 {expected} in a and b",
                observed="; ".join(failures),
                pods=[probe.describe()],
                nodes=[probe_node],
            ),
            pytrace=False,
        )
