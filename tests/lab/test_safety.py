"""Safety: a lab never shows up in the machine's root network namespace, and a sweep removes
everything a lab made even after its daemon was SIGKILLed, without touching other labs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from polling import eventually
from pyroute2 import netns as pyroute2_netns
from root_view import lab_addresses_in, root_namespace_view

from netlab.dataplane.cleanup import lab_netns_names, mounts_under, process_alive, sweep
from netlab.dataplane.topology import plan_ipam_ranges
from netlab.spec import STATE_ROOT, LabSpec

pytestmark = pytest.mark.needs_lab

if TYPE_CHECKING:
    from network_kit import NetworkKit


def test_a_running_lab_leaves_the_root_namespace_untouched(
    lab_name: str, built_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    before = root_namespace_view()
    spec = built_lab(
        LabSpec(
            name=lab_name,
            nodes=3,
            faults=frozenset({"snat-cross-node", "snat-same-node", "udp-drop"}),
        )
    )
    ranges = plan_ipam_ranges(spec)
    pods = [network_kit.add_pod(spec, plan, ranges[plan.name][0], 10) for plan in spec.node_plans()]
    network_kit.serve(pods[1].netns)
    assert network_kit.probe(pods[0].netns, "tcp", pods[1].ip).ok
    during = root_namespace_view()
    assert lab_addresses_in(during) == []
    assert during == before, "the lab changed the root network namespace"
    # built_lab tears down at fixture exit; compare again once it has.


@pytest.fixture
def root_view_unchanged() -> Iterator[None]:
    before = root_namespace_view()
    yield
    assert root_namespace_view() == before


def test_building_and_removing_labs_restores_the_root_namespace(
    root_view_unchanged: None, lab_name: str, built_lab: Callable[[LabSpec], LabSpec]
) -> None:
    built_lab(LabSpec(name=lab_name, nodes=2, faults=frozenset({"block-node-to-pod"})))


# --- sweep -----------------------------------------------------------------------------------------

# A stand-in for a lab daemon, to be SIGKILLed: it builds the topology and a pod namespace,
# runs a process and a runc container in the pod namespace, a worker named by a pid file,
# and stacks tmpfs mounts under the state dir; then waits.
FAKE_DAEMON = r"""
import json, os, secrets, subprocess, sys
from pathlib import Path
from pyroute2 import netns
from netlab.dataplane.topology import build_topology
from netlab.spec import LabSpec

spec = LabSpec(name=sys.argv[1], nodes=2)
state = spec.state_dir
build_topology(spec)
pod = f"{spec.netns_prefix}pod-{secrets.token_hex(4)}"
netns.create(pod)
in_pod = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod}", "sleep", "120"])
worker = subprocess.Popen(["sleep", "121"])
(state / "workers").mkdir(parents=True)
(state / "workers" / "worker.pid").write_text(f"{worker.pid}\n")
volume = state / "volumes" / "v1"
volume.mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume)], check=True)
(volume / "inner").mkdir()
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume / "inner")], check=True)
bundle = state / "bundles" / "c1"
(bundle / "rootfs").mkdir(parents=True)
subprocess.run(["mount", "--bind", "/", str(bundle / "rootfs")], check=True)
subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
config = json.loads((bundle / "config.json").read_text())
config["root"] = {"path": str(bundle / "rootfs"), "readonly": True}
config["process"]["args"] = ["sleep", "122"]
config["process"]["terminal"] = False
config["mounts"] = [m for m in config["mounts"] if m["destination"] in ("/proc", "/dev")]
config["linux"]["namespaces"] = [
    n for n in config["linux"]["namespaces"] if n["type"] != "network"
] + [{"type": "network", "path": f"/run/netns/{pod}"}]
(bundle / "config.json").write_text(json.dumps(config))
subprocess.run(
    ["runc", "--root", str(state / "runc"), "run", "-d", "--bundle", str(bundle), "c1"],
    check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
)
report = {"pod": pod, "in_pod": in_pod.pid, "worker": worker.pid}
(state / "fake-ready").write_text(json.dumps(report))
sys.stdin.read()  # wait to be killed
"""


def wait_for_file(path: Path, timeout: float) -> bool:
    return eventually(path.exists, timeout, interval=0.05)


def test_sweep_after_sigkill_removes_everything(lab_name: str) -> None:
    state_dir = STATE_ROOT / lab_name
    fake_daemon = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, lab_name],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert wait_for_file(state_dir / "fake-ready", 30), "the fake daemon never got ready"
        made = json.loads((state_dir / "fake-ready").read_text())
        container_pid = int(
            json.loads(
                subprocess.run(
                    ["runc", "--root", str(state_dir / "runc"), "state", "c1"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )["pid"]
        )
    finally:
        os.kill(fake_daemon.pid, signal.SIGKILL)
        fake_daemon.wait(timeout=10)
        if fake_daemon.stdin is not None:
            fake_daemon.stdin.close()
    assert len(lab_netns_names(lab_name)) == 4  # fabric, 2 nodes, 1 pod

    report = sweep(lab_name)

    assert report.problems == []
    assert report.containers == ["c1"]
    assert {made["in_pod"], made["worker"]} <= set(report.processes)  # runc killed the container
    for pid in (made["in_pod"], made["worker"], container_pid):
        assert not process_alive(pid), f"pid {pid} survived the sweep"
    assert mounts_under(state_dir) == []
    assert lab_netns_names(lab_name) == []
    assert not state_dir.exists()
    assert sweep(lab_name).found_anything is False  # idempotent


def test_sweep_with_nothing_there_is_a_no_op(lab_name: str) -> None:
    report = sweep(lab_name)
    assert not report.found_anything
    assert report.problems == []
    assert "nothing to clean up" in report.summary()


def test_sweep_never_touches_a_lab_whose_name_extends_this_one(
    lab_names: Callable[[], str],
) -> None:
    base = lab_names()
    others = [f"{base}b", f"{base}-b", f"{base}-pod"]
    made: dict[str, list[str]] = {}
    try:
        for lab in [base, *others]:
            spec = LabSpec(name=lab)
            made[lab] = [
                spec.fabric_netns,
                f"{spec.netns_prefix}node-1",
                f"{spec.netns_prefix}pod-0123abcd",
            ]
            for name in made[lab]:
                pyroute2_netns.create(name)
            spec.state_dir.mkdir(parents=True)
        sweep(base)
        assert lab_netns_names(base) == []
        assert not (STATE_ROOT / base).exists()
        for lab in others:
            assert lab_netns_names(lab) == sorted(made[lab]), f"sweep of {base} touched {lab}"
            assert (STATE_ROOT / lab).is_dir()
    finally:
        for lab in made:
            sweep(lab)
