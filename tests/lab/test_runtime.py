"""The pod runtime below the kubelet: OCI spec policy (pure), CNI ADD/DEL as libcni does it,
the duplicate-pod-ip fault, and sandboxes with runc containers (real runc, real CNI, root)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubelet_fixtures import NEEDS_RUNTIME, lab_name, lab_network, leftovers
from pyroute2 import IPRoute
from tenacity import AsyncRetrying, stop_after_delay, wait_fixed

from netlab.dataplane.cni import NodeCNI, PortMapping, parse_result, port_mappings_from_pod
from netlab.dataplane.runtime import (
    DEFAULT_CAPABILITIES,
    ContainerConfig,
    ContainerRuntime,
    ContainerStartError,
    oci_spec,
)
from netlab.dataplane.sandbox import PodSandbox
from netlab.kubelet.containers import capabilities_for, expand_references
from netlab.spec import LabSpec

pytestmark = pytest.mark.needs_lab

# --- pure ------------------------------------------------------------------------------------


def test_capabilities_follow_containerd_defaults_add_and_drop() -> None:
    assert capabilities_for({}) == DEFAULT_CAPABILITIES
    assert capabilities_for({"capabilities": {"drop": ["ALL"]}}) == ()
    assert capabilities_for({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}) == (
        "CAP_NET_ADMIN",
    )
    dropped = capabilities_for({"capabilities": {"drop": ["NET_RAW", "CAP_KILL"]}})
    assert "CAP_NET_RAW" not in dropped
    assert "CAP_KILL" not in dropped
    assert "CAP_CHOWN" in dropped


def test_oci_spec_privileged_has_all_caps_and_no_masked_paths() -> None:
    plain = oci_spec(ContainerConfig(args=("true",)), rootfs=Path("/r"), cgroups_path="/x")
    privileged = oci_spec(
        ContainerConfig(args=("true",), privileged=True), rootfs=Path("/r"), cgroups_path="/x"
    )
    assert plain["root"] == {"path": "/r", "readonly": True}
    assert "/proc/kcore" in plain["linux"]["maskedPaths"]
    assert "maskedPaths" not in privileged["linux"]
    assert "CAP_SYS_ADMIN" in privileged["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in plain["process"]["capabilities"]["bounding"]
    assert not any(m["destination"] == "/sys/fs/cgroup" for m in plain["mounts"])
    assert any(m["destination"] == "/tmp" and m["type"] == "tmpfs" for m in plain["mounts"])


def test_reference_expansion_is_kubernetes_like() -> None:
    variables = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)", variables) == "1-two"
    assert expand_references("$(MISSING)", variables) == "$(MISSING)"
    assert expand_references("$$(A)", variables) == "$(A)"


def test_result_parsing_keeps_sandbox_addresses_only() -> None:
    result = {
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [
            {"interface": 0, "address": "10.0.0.1/24"},
            {"interface": 2, "address": "10.0.0.5/24", "gateway": "10.0.0.1"},
        ],
    }
    attachment = parse_result("c", "/x", result)
    assert attachment.ips == ("10.0.0.5",)
    assert attachment.gateways == ("10.0.0.1",)


def test_host_ports_become_port_mappings() -> None:
    pod = {"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080}]}]}}
    assert port_mappings_from_pod(pod) == [PortMapping(8080, 80, "tcp")]


# --- CNI and sandboxes (root) ----------------------------------------------------------------


def root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


@contextmanager
def first_node_runtime(spec: LabSpec) -> Iterator[tuple[NodeCNI, ContainerRuntime]]:
    """The CNI of the lab's first node and a started container runtime, closed afterwards (in a
    `lab_network`, whose leftovers a test checks after this ends)."""
    plan = spec.node_plans()[0]
    cni = NodeCNI(spec, plan, list(plan.pod_cidrs))
    runtime = ContainerRuntime(spec)
    runtime.start()
    try:
        yield cni, runtime
    finally:
        runtime.close()


@NEEDS_RUNTIME
def test_cni_add_then_del_releases_the_lease_and_root_netns_is_untouched() -> None:
    spec = LabSpec(name=lab_name(), nodes=1)
    before = root_links()
    with lab_network(spec):
        with first_node_runtime(spec) as (cni, runtime):
            plan = spec.node_plans()[0]
            sandbox = PodSandbox(spec, plan, runtime, cni, {"metadata": {"uid": str(uuid.uuid4())}})
            asyncio.run(sandbox.create())
            assert cni.leases() == list(sandbox.ips)
            assert sandbox.ips[0].startswith("10.244.0.")
            assert root_links() == before, "CNI made a link in the root namespace"
            asyncio.run(sandbox.remove())
            assert cni.leases() == []
        assert leftovers(spec).empty(), leftovers(spec)


@NEEDS_RUNTIME
def test_duplicate_pod_ip_fault_hands_out_the_same_address_twice() -> None:
    spec = LabSpec(name=lab_name(), nodes=1, faults=frozenset({"duplicate-pod-ip"}))

    async def scenario(cni: NodeCNI, runtime: ContainerRuntime) -> tuple[str, str]:
        plan = spec.node_plans()[0]
        first = PodSandbox(spec, plan, runtime, cni, {"metadata": {"uid": str(uuid.uuid4())}})
        second = PodSandbox(spec, plan, runtime, cni, {"metadata": {"uid": str(uuid.uuid4())}})
        await first.create()
        await second.create()
        try:
            return first.ips[0], second.ips[0]
        finally:
            await asyncio.gather(first.remove(), second.remove())

    with lab_network(spec):
        with first_node_runtime(spec) as (cni, runtime):
            one, two = asyncio.run(scenario(cni, runtime))
        assert one == two
        assert cni.leases() == []
        assert leftovers(spec).empty(), leftovers(spec)


@NEEDS_RUNTIME
def test_runc_container_exit_code_exec_and_start_error() -> None:
    spec = LabSpec(name=lab_name(), nodes=1)

    async def scenario(runtime: ContainerRuntime, cni: NodeCNI) -> dict[str, object]:
        plan = spec.node_plans()[0]
        pod = {"metadata": {"uid": str(uuid.uuid4()), "name": "rt-pod"}}
        sandbox = PodSandbox(spec, plan, runtime, cni, pod)
        await sandbox.create()
        namespaces = {
            "pid": None,
            "mount": None,
            "network": sandbox.net_path,
            "uts": sandbox.uts_path,
            "ipc": sandbox.ipc_path,
        }
        log = spec.state_dir / "test.log"
        found: dict[str, object] = {}
        try:
            started = time.monotonic()
            running = await runtime.run(
                "c1",
                ContainerConfig(
                    args=("sh", "-c", "echo out; echo err >&2; exit 7"),
                    env=("PATH=/usr/bin:/bin",),
                    namespaces=namespaces,
                ),
                log,
            )
            found["run_seconds"] = time.monotonic() - started
            found["exit"] = await running.wait()
            found["log"] = log.read_text()
            long_running = await runtime.run(
                "c2",
                ContainerConfig(
                    args=("sleep", "30"), env=("PATH=/usr/bin:/bin",), namespaces=namespaces
                ),
                log,
            )
            durations = []
            for _ in range(5):
                started = time.monotonic()
                process = await runtime.exec("c2", ["hostname"])
                output, _ = await process.communicate()
                durations.append(time.monotonic() - started)
            found["exec_seconds"] = sorted(durations)[2]
            found["hostname"] = output.decode().strip()
            # Killing an exec kills the command inside the container too, not only runc.
            stray = await runtime.exec("c2", ["sh", "-c", "echo started; exec sleep 31"])
            assert stray.stdout is not None
            assert await stray.stdout.readline() == b"started\n"
            stray.kill()
            await stray.wait()
            # SIGKILL lands asynchronously: the command must be gone within a bounded while.
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(3), wait=wait_fixed(0.05), reraise=True
            ):
                with attempt:
                    listing = await runtime.exec("c2", ["ps", "-eo", "stat,args"])
                    processes, _ = await listing.communicate()
                    alive = [
                        line
                        for line in processes.decode().splitlines()
                        if "sleep 31" in line and not line.lstrip().startswith("Z")
                    ]
                    found["stray_left"] = bool(alive)
                    assert not alive, alive
            found["stop_exit"] = await runtime.stop(long_running, 0.5)
            try:
                await runtime.run(
                    "c3", ContainerConfig(args=("no-such-binary",), namespaces=namespaces), log
                )
            except ContainerStartError as error:
                found["start_error"] = str(error)
        finally:
            await asyncio.gather(*(runtime.delete(c) for c in ("c1", "c2", "c3")))
            await sandbox.remove()
        return found

    with lab_network(spec):
        with first_node_runtime(spec) as (cni, runtime):
            found = asyncio.run(scenario(runtime, cni))
        print(f"runc run {found['run_seconds']:.3f}s, runc exec {found['exec_seconds']:.3f}s")
        assert found["exit"] == 7
        # stdout and stderr reach the log through separate pipes (as with containerd): both
        # lines arrive, in either order.
        assert sorted(str(found["log"]).splitlines()) == ["err", "out"]
        assert found["hostname"] == "rt-pod"  # the pause container owns the UTS namespace
        assert found["stop_exit"] == 137  # sleep as pid 1 ignores SIGTERM: SIGKILL after grace
        assert "no-such-binary" in str(found.get("start_error"))
        print(f"runc exec took {float(str(found['exec_seconds'])):.3f} s")  # a figure
        assert found["stray_left"] is False
        assert leftovers(spec).empty(), leftovers(spec)
