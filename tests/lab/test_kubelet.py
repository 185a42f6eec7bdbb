"""The kubelet end to end (real runc, real CNI, root): pods share one network namespace and
IP, volumes, downward API, security contexts, restart policies, probes, graceful stop, cleanup
after many cycles, and every runtime fault observable."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubelet_fixtures import (
    NEEDS_RUNTIME,
    SLEEP_UNTIL_TERM,
    KubeletHarness,
    container_status,
    is_running_ready,
    lab_name,
    lab_network,
    leftovers,
    make_pod,
    running_kubelet,
    sleeper,
)
from pyroute2 import IPRoute

from netlab.contract import ContainerNotFound, ContainerNotRunning, JSONDict, PodNotFound
from netlab.dataplane.cleanup import sweep
from netlab.spec import LabSpec

pytestmark = [pytest.mark.needs_lab, NEEDS_RUNTIME]

ADDRESSES = (
    "import socket,fcntl,struct,array,os;"
    "print(os.readlink('/proc/self/ns/net'));"
    "print(sorted(l.split()[1] for l in open('/proc/net/if_inet6')));"
    "s=socket.socket();"
    "print(socket.inet_ntoa(fcntl.ioctl(s.fileno(),0x8915,struct.pack('256s',b'eth0'))[20:24]))"
)


def lab(*faults: str) -> LabSpec:
    return LabSpec(name=lab_name(), nodes=1, faults=frozenset(faults))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def assert_clean(spec: LabSpec, *, kubelet_open: bool = False) -> None:
    """Nothing of the lab's pods is left (an open kubelet keeps only the host view and the
    tmpfs of container layers)."""
    found = leftovers(spec)
    if kubelet_open:
        shared = {str(spec.state_dir / "rootfs"), str(spec.state_dir / "layers")}
        found.mounts = [m for m in found.mounts if m not in shared]
    assert found.empty(), f"left behind: {found}"


# --- one pod, shared network ---------------------------------------------------------------


def test_two_containers_share_one_ip_netns_and_localhost() -> None:
    spec = lab()
    pod = make_pod(
        "duo",
        [
            sleeper(
                "web",
                command=["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"],
                workingDir="/tmp",
                ports=[{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}],
                readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            ),
            sleeper(
                "side",
                readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1},
            ),
        ],
    )
    uid = pod["metadata"]["uid"]

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            started = time.monotonic()
            await harness.kubelet.start_pod(pod)
            status = await harness.wait_running(uid)
            print(f"two-container pod Running+Ready in {time.monotonic() - started:.2f}s")
            web = (await harness.python(uid, "web", ADDRESSES)).splitlines()
            side = (await harness.python(uid, "side", ADDRESSES)).splitlines()
            assert web == side, "containers see different network namespaces or addresses"
            assert web[2] == status["podIP"]
            assert status["podIPs"] == [{"ip": status["podIP"]}]
            assert status["hostIP"] == spec.node_plans()[0].internal_ip
            # localhost between containers: side fetches web's page over 127.0.0.1.
            page = await harness.python(
                uid,
                "side",
                "import urllib.request;"
                "print(urllib.request.urlopen('http://127.0.0.1:8080/',timeout=5).status)",
            )
            assert page == "200"
            # hostPort: the node's own address forwards to the pod (portmap, in the node netns).
            node_ip = spec.node_plans()[0].internal_ip
            connection = await harness.kubelet.prober.connect_from_node(node_ip, 18080)
            connection.close()
            hostname = await harness.python(
                uid, "side", "import socket;print(socket.gethostname())"
            )
            assert hostname == "duo"
            hosts = await harness.python(uid, "web", "print(open('/etc/hosts').read())")
            assert f"{status['podIP']}\tduo" in hosts
            for name in ("web", "side"):
                entry = container_status(status, name)
                assert entry["ready"] is True
                assert entry["started"] is True
                assert entry["containerID"].startswith("runc://")
                assert "running" in entry["state"]
            conditions = {c["type"]: c["status"] for c in status["conditions"]}
            assert conditions == {
                "PodReadyToStartContainers": "True",
                "Initialized": "True",
                "Ready": "True",
                "ContainersReady": "True",
                "PodScheduled": "True",
            }
            assert status["qosClass"] == "BestEffort"
            assert {"Created", "Started"} <= set(harness.reasons(uid))
            with pytest.raises(ContainerNotFound):
                await harness.kubelet.exec(uid, "nope", ["true"], stdin=False, tty=False)
            with pytest.raises(PodNotFound):
                await harness.kubelet.exec("no-such-uid", "web", ["true"], stdin=False, tty=False)
            lease = harness.kubelet.cni.leases()
            assert lease == [status["podIP"]]
            await harness.kubelet.stop_pod(uid, 1)  # http.server as pid 1 ignores SIGTERM
            assert harness.kubelet.cni.leases() == []
            assert "Killing" in harness.reasons(uid)
            assert_clean(spec, kubelet_open=True)

    with lab_network(spec):
        run(scenario())


def test_volumes_env_security_context_and_host_network() -> None:
    spec = lab()
    volumes = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "memory", "emptyDir": {"medium": "Memory"}},
        {
            "name": "config",
            "configMap": {
                "name": "settings",
                "defaultMode": 0o640,
                "items": [{"key": "greeting", "path": "sub/hello.txt"}],
            },
        },
    ]
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "GREETING", "value": "hi-$(POD_NAME)"},
    ]
    pod = make_pod(
        "features",
        [
            sleeper(
                "a",
                env=env,
                workingDir="/usr/share",
                volumeMounts=[
                    {"name": "scratch", "mountPath": "/data-a"},
                    {"name": "memory", "mountPath": "/mem-a"},
                    {"name": "config", "mountPath": "/etc/cfg"},
                ],
            ),
            sleeper(
                "b",
                securityContext={
                    "runAsUser": 65534,
                    "runAsGroup": 65534,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                },
                volumeMounts=[
                    {"name": "scratch", "mountPath": "/data-b"},
                    {"name": "memory", "mountPath": "/mem-b", "readOnly": True},
                ],
            ),
            sleeper("c", securityContext={"privileged": True}),
        ],
        volumes=volumes,
    )
    host_pod = make_pod("hostnet", [sleeper("agent")], hostNetwork=True)
    uid = pod["metadata"]["uid"]
    host_uid = host_pod["metadata"]["uid"]
    plan = spec.node_plans()[0]

    async def scenario() -> None:
        configmaps = {"default/settings": {"greeting": "hello volume", "other": "unused"}}
        async with running_kubelet(spec, configmaps) as harness:
            await asyncio.gather(
                harness.kubelet.start_pod(pod), harness.kubelet.start_pod(host_pod)
            )
            status = await harness.wait_running(uid)
            host_status = await harness.wait_running(host_uid)
            await check_volumes(harness, uid)
            await check_env(harness, uid, status)
            await check_security(harness, uid)
            assert host_status["podIP"] == plan.internal_ip
            host_ip = await harness.python(
                host_uid,
                "agent",
                "import socket,fcntl,struct;s=socket.socket();print(socket.inet_ntoa("
                "fcntl.ioctl(s.fileno(),0x8915,struct.pack('256s',b'eth0'))[20:24]))",
            )
            assert host_ip == plan.internal_ip
            memory_mounts = [m for m in leftovers(spec).mounts if m.endswith("/_volumes/memory")]
            assert len(memory_mounts) == 1, "medium Memory emptyDir is not a tmpfs under the lab"
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


async def check_volumes(harness: KubeletHarness, uid: str) -> None:
    await harness.python(uid, "a", "open('/data-a/from-a','w').write('A')")
    await harness.python(uid, "b", "open('/data-b/from-b','w').write('B')")
    assert await harness.python(uid, "b", "print(open('/data-b/from-a').read())") == "A"
    assert await harness.python(uid, "a", "print(open('/data-a/from-b').read())") == "B"
    await harness.python(uid, "a", "open('/mem-a/m','w').write('M')")
    assert await harness.python(uid, "b", "print(open('/mem-b/m').read())") == "M"
    fstype = await harness.python(
        uid, "a", "print([l.split()[2] for l in open('/proc/mounts') if l.split()[1]=='/mem-a'][0])"
    )
    assert fstype == "tmpfs"
    read_only = await harness.python(
        uid,
        "b",
        "import os\ntry:\n open('/mem-b/x','w')\nexcept OSError as e: print(e.errno)",
    )
    assert read_only == "30"  # EROFS: readOnly volumeMount
    config = await harness.python(
        uid,
        "a",
        "import os;p='/etc/cfg/sub/hello.txt';"
        "print(open(p).read(), oct(os.stat(p).st_mode & 0o777), os.listdir('/etc/cfg'))",
    )
    assert config == "hello volume 0o640 ['sub']"


async def check_env(harness: KubeletHarness, uid: str, status: JSONDict) -> None:
    values = await harness.python(
        uid,
        "a",
        "import os;print('|'.join(os.environ[k] for k in "
        "['POD_NAME','POD_NAMESPACE','POD_UID','NODE_NAME','POD_IP','HOST_IP','SA','GREETING']));"
        "print(os.getcwd())",
    )
    fields, cwd = values.splitlines()
    assert fields.split("|") == [
        "features",
        "default",
        uid,
        "node-1",
        status["podIP"],
        status["hostIP"],
        "default",
        "hi-features",
    ]
    assert cwd == "/usr/share"


CAPS = (
    "import os;s=dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() "
    "if ':\\t' in l);print(s['CapBnd'].strip(), s['CapEff'].strip(), os.getuid(), os.getgid())"
)


async def check_security(harness: KubeletHarness, uid: str) -> None:
    bounding_a, effective_a, uid_a, _ = (await harness.python(uid, "a", CAPS)).split()
    assert int(bounding_a, 16) == 0xA80425FB  # containerd's default set
    assert effective_a == bounding_a
    assert uid_a == "0"
    bounding_b, effective_b, uid_b, gid_b = (await harness.python(uid, "b", CAPS)).split()
    assert int(bounding_b, 16) == 1 << 12  # only CAP_NET_ADMIN
    assert int(effective_b, 16) == 0  # non-root: no effective caps without ambient
    assert (uid_b, gid_b) == ("65534", "65534")
    bounding_c, _, _, _ = (await harness.python(uid, "c", CAPS)).split()
    held = Path("/proc/self/status").read_text().split("CapEff:\t")[1].split()[0]
    assert int(bounding_c, 16) == int(held, 16)  # privileged: all the runtime holds
    readable = "print(len(open('/proc/timer_list','rb').read(64)) > 0)"
    assert await harness.python(uid, "a", readable) == "False"  # masked (bound to /dev/null)
    assert await harness.python(uid, "c", readable) == "True"  # privileged: nothing masked


# --- restarts ------------------------------------------------------------------------------


def test_restart_policies_exit_codes_and_restart_keeps_ip() -> None:
    spec = lab()
    crashing = make_pod(
        "crashy",
        [
            sleeper("steady"),
            {
                "name": "flaky",
                "image": "netlab/host",
                "command": ["sh", "-c", "echo attempt; sleep 0.3; exit 1"],
            },
        ],
        initContainers=[{"name": "seed", "image": "netlab/host", "args": ["true"]}],
    )
    never = make_pod(
        "never",
        [{"name": "x", "image": "i", "command": ["sh", "-c", "exit 3"]}],
        restartPolicy="Never",
    )
    done = make_pod(
        "done", [{"name": "x", "image": "i", "command": ["true"]}], restartPolicy="OnFailure"
    )
    no_command = make_pod("bare", [{"name": "x", "image": "i"}])
    crash_uid = crashing["metadata"]["uid"]

    def restarted_twice(status: JSONDict) -> bool:
        flaky = container_status(status, "flaky")
        return flaky["restartCount"] >= 2 and "running" in flaky["state"]

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            kubelet = harness.kubelet
            await asyncio.gather(
                *(kubelet.start_pod(p) for p in (crashing, never, done, no_command))
            )
            first = await harness.wait_status(
                crash_uid, lambda s: "podIP" in s and s["phase"] == "Running", "Running"
            )
            seed = container_status(first, "seed", init=True)
            assert seed["state"]["terminated"]["reason"] == "Completed"
            status = await harness.wait_status(crash_uid, restarted_twice, "two restarts")
            flaky = container_status(status, "flaky")
            terminated = flaky["lastState"]["terminated"]
            assert terminated["exitCode"] == 1
            assert terminated["reason"] == "Error"
            assert terminated["startedAt"] <= terminated["finishedAt"]
            assert status["podIP"] == first["podIP"], "a container restart changed the pod IP"
            assert container_status(status, "steady")["restartCount"] == 0
            assert "BackOff" in harness.reasons(crash_uid)
            previous = b"".join(
                [
                    c
                    async for c in kubelet.logs(
                        crash_uid, "flaky", follow=False, tail_lines=None, previous=True
                    )
                ]
            )
            assert previous == b"attempt\n"

            failed = await harness.wait_status(
                never["metadata"]["uid"], lambda s: s["phase"] == "Failed", "Failed"
            )
            state = container_status(failed, "x")["state"]["terminated"]
            assert (state["exitCode"], state["reason"]) == (3, "Error")
            assert container_status(failed, "x")["restartCount"] == 0
            succeeded = await harness.wait_status(
                done["metadata"]["uid"], lambda s: s["phase"] == "Succeeded", "Succeeded"
            )
            assert container_status(succeeded, "x")["state"]["terminated"]["reason"] == "Completed"
            # Finished pods give their IP back (the sandbox goes), the status keeps it.
            released = await harness.wait_status(
                done["metadata"]["uid"],
                lambda s: (
                    {c["type"]: c["status"] for c in s["conditions"]}["PodReadyToStartContainers"]
                    == "False"
                ),
                "sandbox released",
            )
            assert released["podIP"] == succeeded["podIP"]
            assert succeeded["podIP"] not in kubelet.cni.leases()
            with pytest.raises(ContainerNotRunning):
                await kubelet.exec(done["metadata"]["uid"], "x", ["true"], stdin=False, tty=False)
            bare = await harness.wait_status(
                no_command["metadata"]["uid"],
                lambda s: (
                    "waiting" in container_status(s, "x")["state"]
                    and container_status(s, "x")["state"]["waiting"]["reason"]
                    == "CreateContainerError"
                ),
                "CreateContainerError",
            )
            assert bare["phase"] == "Pending"
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


def test_graceful_stop_sigterm_then_sigkill_after_grace() -> None:
    spec = lab()
    polite = make_pod("polite", [sleeper("x")])
    stubborn = make_pod(
        "stubborn",
        [
            {
                "name": "x",
                "image": "i",
                "command": [
                    "python3",
                    "-c",
                    "import signal,threading;signal.signal(signal.SIGTERM,signal.SIG_IGN);"
                    "print('ready',flush=True);threading.Event().wait()",
                ],
            }
        ],
    )

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            kubelet = harness.kubelet
            await asyncio.gather(kubelet.start_pod(polite), kubelet.start_pod(stubborn))
            for pod in (polite, stubborn):
                await harness.wait_running(pod["metadata"]["uid"])
                # Signal handlers are set once the process says so (a SIGTERM before that
                # is ignored by a pid 1 without a handler, as on any node).
                await harness.wait_log(pod["metadata"]["uid"], "x", b"ready")
            started = time.monotonic()
            await kubelet.stop_pod(polite["metadata"]["uid"], 10)
            polite_seconds = time.monotonic() - started
            started = time.monotonic()
            await kubelet.stop_pod(stubborn["metadata"]["uid"], 1)
            stubborn_seconds = time.monotonic() - started
            # Figures, not assertions (shared machines); exit code 0 shows SIGTERM was honoured
            # before the 10 s grace, and a stop never ends before its grace runs out.
            print(f"stop: SIGTERM honoured {polite_seconds:.2f}s, ignored {stubborn_seconds:.2f}s")
            assert stubborn_seconds >= 1, "SIGKILL came before the 1 s grace period ended"
            final = harness.statuses[polite["metadata"]["uid"]]
            assert container_status(final, "x")["state"]["terminated"]["exitCode"] == 0
            final = harness.statuses[stubborn["metadata"]["uid"]]
            assert container_status(final, "x")["state"]["terminated"]["exitCode"] == 137
            assert kubelet.cni.leases() == []
            assert kubelet.pod_uids() == []
            assert_clean(spec, kubelet_open=True)

    with lab_network(spec):
        run(scenario())


def test_hundred_create_delete_cycles_leave_nothing() -> None:
    spec = lab()
    cycles, concurrency = 100, 5
    durations: list[float] = []

    async def one_cycle(harness: KubeletHarness, index: int) -> None:
        # A shell that exits on SIGTERM: cheaper than Python, so 100 cycles fit the time budget.
        container = sleeper("x", command=["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"])
        pod = make_pod(f"cycle-{index}", [container], terminationGracePeriodSeconds=1)
        uid = pod["metadata"]["uid"]
        started = time.monotonic()
        await harness.kubelet.start_pod(pod)
        await harness.wait_status(uid, lambda s: s["phase"] == "Running", "Running")
        durations.append(time.monotonic() - started)
        await harness.kubelet.stop_pod(uid, 1)

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            started = time.monotonic()
            for batch in range(0, cycles, concurrency):
                await asyncio.gather(
                    *(one_cycle(harness, i) for i in range(batch, batch + concurrency))
                )
            total = time.monotonic() - started
            print(
                f"{cycles} cycles in {total:.1f}s; create-to-running median "
                f"{statistics.median(durations):.3f}s, max {max(durations):.3f}s "
                f"({concurrency} concurrent)"
            )
            assert harness.kubelet.cni.leases() == []
            assert_clean(spec, kubelet_open=True)
            stream = harness.kubelet.logs(
                "gone", "x", follow=False, tail_lines=None, previous=False
            )
            with pytest.raises(PodNotFound):
                await anext(aiter(stream))
        # Start time is a figure (printed above), not an assertion: these machines are shared.
        assert len(durations) == cycles

    with lab_network(spec):
        run(scenario())
        veths = node_veths(spec)  # outside the event loop: pyroute2's sync API runs its own
        assert veths == [], f"veths left on the node: {veths}"


def node_veths(spec: LabSpec) -> list[str]:
    """The veth names left on the lab's node (pods' host ends)."""
    with IPRoute(netns=spec.node_plans()[0].netns) as ipr:
        return [
            str(link.get_attr("IFLA_IFNAME"))
            for link in ipr.get_links()
            if str(link.get_attr("IFLA_IFNAME")).startswith("veth")
        ]


# --- faults --------------------------------------------------------------------------------


def test_split_netns_unshared_emptydir_wrong_ip_and_duplicate_ip_faults() -> None:
    spec = lab("split-netns", "unshared-emptydir", "wrong-self-ip", "duplicate-pod-ip")
    volume = [{"name": "shared", "emptyDir": {}}]
    mounts = [{"name": "shared", "mountPath": "/shared"}]
    first = make_pod(
        "faulty",
        [sleeper("a", volumeMounts=mounts), sleeper("b", volumeMounts=mounts)],
        volumes=volume,
    )
    second = make_pod("twin", [sleeper("a")])
    uid = first["metadata"]["uid"]

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            await harness.kubelet.start_pod(first)
            await harness.kubelet.start_pod(second)
            status = await harness.wait_running(uid)
            twin = await harness.wait_running(second["metadata"]["uid"])
            a = (await harness.python(uid, "a", ADDRESSES)).splitlines()
            b = (await harness.python(uid, "b", ADDRESSES)).splitlines()
            assert a[0] != b[0], "split-netns: containers share a network namespace"
            await harness.python(uid, "a", "open('/shared/f','w').write('x')")
            seen = await harness.python(uid, "b", "import os;print(os.path.exists('/shared/f'))")
            assert seen == "False", "unshared-emptydir: b sees a's file"
            sandbox = harness.kubelet.pod_sandbox(uid)
            assert sandbox is not None
            assert status["podIP"] != sandbox.ips[0], "wrong-self-ip: status shows the real IP"
            twin_sandbox = harness.kubelet.pod_sandbox(second["metadata"]["uid"])
            assert twin_sandbox is not None
            assert twin_sandbox.ips == sandbox.ips, "duplicate-pod-ip: pods got distinct IPs"
            assert twin["podIP"] == status["podIP"]
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


async def start_restarting_pod(harness: KubeletHarness) -> tuple[str, JSONDict]:
    """Start a pod whose container ``x`` exits with an error half a second after it starts;
    its uid and its first status with an IP."""
    pod = make_pod(
        "resetting",
        [{"name": "x", "image": "i", "command": ["sh", "-c", "sleep 0.5; exit 1"]}],
    )
    uid = pod["metadata"]["uid"]
    await harness.kubelet.start_pod(pod)
    return uid, await harness.wait_status(uid, lambda s: "podIP" in s, "an IP")


def test_sandbox_reset_fault_gives_a_restarted_pod_a_new_ip() -> None:
    spec = lab("sandbox-reset")

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            uid, first = await start_restarting_pod(harness)
            restarted = await harness.wait_status(
                uid,
                lambda s: (
                    container_status(s, "x")["restartCount"] >= 1
                    and s.get("podIP") != first["podIP"]
                ),
                "a restart with a new IP",
            )
            sandbox = harness.kubelet.pod_sandbox(uid)
            assert sandbox is not None
            assert restarted["podIP"] == sandbox.ips[0]
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


def test_sandbox_reset_same_ip_fault_gives_a_new_namespace_with_the_old_ip() -> None:
    spec = lab("sandbox-reset-same-ip")

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            uid, first = await start_restarting_pod(harness)
            sandbox = harness.kubelet.pod_sandbox(uid)
            assert sandbox is not None
            namespace_before = os.stat(sandbox.net_path).st_ino
            await harness.wait_status(
                uid,
                lambda s: container_status(s, "x")["restartCount"] >= 1 and "podIP" in s,
                "a restart",
            )
            again = harness.kubelet.pod_sandbox(uid)
            assert again is not None
            await harness.wait_status(uid, lambda s: again.generation >= 1, "a new sandbox")
            assert again.ips == (first["podIP"],)
            assert os.stat(again.net_path).st_ino != namespace_before
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


def test_without_cluster_dns_kubelet_says_so_for_cluster_first_pods() -> None:
    spec = lab("no-cluster-dns")
    pod = make_pod("plain", [{"name": "x", "image": "i", "command": ["sleep", "60"]}])
    uid = pod["metadata"]["uid"]

    async def scenario() -> None:
        async with running_kubelet(spec) as harness:
            await harness.kubelet.start_pod(pod)
            await harness.wait_status(uid, lambda s: "podIP" in s, "an IP")
            assert "MissingClusterDNS" in harness.reasons(uid)
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


def test_network_not_ready_fault_starts_no_pod_network_pod_on_node_2() -> None:
    spec = LabSpec(name=lab_name(), nodes=2, faults=frozenset({"network-not-ready-on-node"}))
    waiting = make_pod("waiting", [sleeper("x")], node="node-2")
    host = make_pod("host", [sleeper("x")], node="node-2", hostNetwork=True)

    async def scenario() -> None:
        async with running_kubelet(spec, node=2) as harness:
            await harness.kubelet.start_pod(waiting)
            await harness.kubelet.start_pod(host)
            await harness.wait_running(host["metadata"]["uid"])  # the host's network is fine
            uid = waiting["metadata"]["uid"]
            status = await harness.wait_status(uid, lambda s: "phase" in s, "a status")
            assert status["phase"] == "Pending"
            assert "podIP" not in status
            assert harness.kubelet.pod_sandbox(uid) is None
            (message,) = [
                m for who, kind, reason, m in harness.events if reason == "NetworkNotReady"
            ]
            assert message.startswith(
                "network is not ready: container runtime network not ready: NetworkReady=false "
                "reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin "
                "not initialized"
            )
        assert_clean(spec)

    with lab_network(spec):
        run(scenario())


def test_running_status_helper() -> None:
    assert is_running_ready(
        {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    )
    assert not is_running_ready({"phase": "Pending"})
    assert SLEEP_UNTIL_TERM


# --- a SIGKILLed kubelet -----------------------------------------------------------------------

KILLED_KUBELET = """
import asyncio, sys
sys.path.insert(0, {fixtures!r})
from kubelet_fixtures import make_pod, running_kubelet, sleeper
from netlab.spec import LabSpec

async def main() -> None:
    spec = LabSpec(name={name!r}, nodes=1)
    mounts = [{{"name": "m", "mountPath": "/m"}}]
    pod = make_pod(
        "doomed",
        [sleeper("a", volumeMounts=mounts), sleeper("b")],
        volumes=[{{"name": "m", "emptyDir": {{"medium": "Memory"}}}}],
    )
    async with running_kubelet(spec) as harness:
        await harness.kubelet.start_pod(pod)
        await harness.wait_running(pod["metadata"]["uid"])
        print("running", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_sigkilled_kubelet_leaves_only_what_the_sweep_removes() -> None:
    spec = lab()
    fixtures = str(Path(__file__).parents[1] / "support")  # kubelet_fixtures
    script = KILLED_KUBELET.format(fixtures=fixtures, name=spec.name)
    with lab_network(spec):
        daemon = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=fixtures
        )
        try:
            assert daemon.stdout is not None
            assert daemon.stdout.readline().strip() == "running"
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=10)
        before = leftovers(spec)
        assert before.runc, "the pod should still be running after its kubelet died"
        assert before.netns
        report = sweep(spec.name, spec.state_root)
        assert not report.problems, report.summary()
        after = leftovers(spec, include_topology=True)
        assert after.empty(), f"the sweep left: {after}"
