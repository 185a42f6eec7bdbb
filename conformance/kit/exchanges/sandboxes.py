"""The sandbox check's disruption, once per run for every node at once: kill one container of
each node's sandbox pod, wait until every one has restarted and is Ready again, then read each
pod's IPs, both containers' network namespaces and restart counts, and probe localhost between
its containers (the same sweep and verdict as every reachability check). Done for all nodes
together so the cost does not grow with the nodes.

`sandbox_changes` judges one pod: the same sandbox keeps its IPs and its network namespace
(the agent's ``netns``: the namespace's inode and, from Linux 5.14, its cookie, which is never
reused), and only the killed container restarts. A runtime that makes a new namespace on a
container restart and gets the same IP back from IPAM keeps the IPs but not the namespace,
and kubelet restarts every container of a pod whose sandbox it had to make again."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from conformance.kit.base.errors import ProbeCallError, ProbeDeploymentError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import RunInfo, once
from conformance.kit.cluster.api import call_api, name_of
from conformance.kit.cluster.inventory import pod_ips
from conformance.kit.exchanges.reachability import Endpoint, Outcome, Target, run_sweep
from conformance.kit.probes.client import ProbeClient, require_ok
from conformance.kit.probes.deploy import wait_for_pods
from conformance.kit.probes.lives import (
    PodLife,
    blame_removal,
    container_running,
    pod_life,
    pod_lives,
    removal_reason,
    restart_count,
)
from conformance.kit.probes.model import ROLE_SANDBOX, Probe, ProbeMap
from conformance.kit.probes.parallel import in_parallel
from conformance.kit.probes.podspecs import ping_command

KILLED = "b"
SURVIVOR = "a"
SANDBOXES_RECORD = "sandboxes"
# The agent handles SIGTERM (and exits), so this works for a PID 1 too.
KILL_SCRIPT = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGTERM)"


@dataclass(frozen=True)
class NetnsId(JSONData):
    """A network namespace as the agent's ``info`` names it: ``net:[inode]`` and the kernel's
    cookie (None before Linux 5.14)."""

    inode: str | None = None
    cookie: int | None = None

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> NetnsId:
        cookie = info.get("netns_cookie")
        inode = info.get("netns")
        return cls(
            inode=str(inode) if inode else None, cookie=cookie if isinstance(cookie, int) else None
        )

    def same(self, other: NetnsId) -> bool | None:
        """The same namespace: by cookie where both have one, else by inode (which the kernel
        may give a new namespace once the old one is freed); None when neither tells."""
        if self.cookie is not None and other.cookie is not None:
            return self.cookie == other.cookie
        if self.inode is not None and other.inode is not None:
            return self.inode == other.inode
        return None

    def describe(self) -> str:
        cookie = f" (cookie {self.cookie})" if self.cookie is not None else ""
        return f"{self.inode or 'net:[?]'}{cookie}"


@dataclass(frozen=True)
class SandboxRestart(JSONData):
    """One node's sandbox pod across a restart of its container `KILLED`: its IPs, the network
    namespace of `KILLED` before and after and of `SURVIVOR` after, every container's restart
    count before and after, and localhost between them afterwards."""

    node: str
    pod: str
    ips_before: tuple[str, ...]
    ips_after: tuple[str, ...] = ()
    localhost: Outcome | None = None
    error: str | None = None
    netns_before: NetnsId | None = None
    netns_after: NetnsId | None = None
    survivor_netns: NetnsId | None = None
    restarts_before: Mapping[str, int] = field(default_factory=dict)
    restarts_after: Mapping[str, int] = field(default_factory=dict)


def sandbox_changes(restart: SandboxRestart) -> list[str]:
    """What shows ``restart``'s pod did not keep its sandbox (empty: it did): its IPs changed,
    `KILLED` came back in another network namespace or apart from `SURVIVOR`, or `SURVIVOR`
    restarted too. `ProbeCallError` when the namespaces were not reported, so nothing can be
    compared (could not test, never a pass)."""
    before, after, survivor = restart.netns_before, restart.netns_after, restart.survivor_netns
    if before is None or after is None or survivor is None:
        raise ProbeCallError(f"{restart.pod}: the containers' network namespaces were not read")
    kept, together = before.same(after), survivor.same(after)
    if kept is None or together is None:
        raise ProbeCallError(
            f"{restart.pod}: the agents named no network namespace (before {before.describe()}, "
            f"after {after.describe()}, {SURVIVOR} {survivor.describe()})"
        )
    found = []
    if restart.ips_after != restart.ips_before:
        found.append(
            f"pod IPs changed from {list(restart.ips_before)} to {list(restart.ips_after)}"
        )
    if not kept:
        found.append(
            f"container {KILLED} came back in another network namespace: {before.describe()} "
            f"before, {after.describe()} after (a new sandbox)"
        )
    if not together:
        found.append(
            f"containers {SURVIVOR} and {KILLED} are in different network namespaces after the "
            f"restart: {SURVIVOR} {survivor.describe()}, {KILLED} {after.describe()}"
        )
    then, now = restart.restarts_before.get(SURVIVOR), restart.restarts_after.get(SURVIVOR)
    if then is not None and now is not None and now != then:
        found.append(
            f"container {SURVIVOR} restarted too (restart count {then} -> {now}) though only "
            f"{KILLED} was stopped: kubelet restarts every container of a pod whose sandbox it "
            "had to make again"
        )
    return found


def localhost_target(check: str, sandbox: Probe) -> Target:
    """The exchange that must work again after the restart: TCP over 127.0.0.1 from the
    surviving container to the restarted one."""
    return Target(
        check=check,
        proto="tcp",
        family=4,
        source=Endpoint(sandbox.name, SURVIVOR, sandbox.node),
        destination=Endpoint(sandbox.name, KILLED, sandbox.node),
        host="127.0.0.1",
        port=sandbox.container(KILLED).tcp_port,
        capture=False,
        measure_loss=False,  # loopback: no network to lose packets on
    )


def restart_sandboxes(
    check: str, probe_map: ProbeMap, probe_client: ProbeClient, core: client.CoreV1Api
) -> dict[str, SandboxRestart]:
    """Kill `KILLED` in every sandbox pod at once, wait until all run again and their agents
    answer, and look (``check``: the name of the check the localhost exchanges are for)."""
    timeouts = probe_client.timeouts
    namespace = probe_map.namespace
    sandboxes = {p.name: p for p in probe_map.of_role(ROLE_SANDBOX)}
    if not sandboxes:
        raise ProbeDeploymentError("the run deployed no sandbox pod")
    listed = call_api(
        f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
    )
    listed_sandboxes = {name_of(p): p for p in listed.items if name_of(p) in sandboxes}
    before = {n: p for n, p in listed_sandboxes.items() if removal_reason(p) is None}
    if not before:
        raise ProbeDeploymentError(
            f"every sandbox pod was gone before the check: {sorted(sandboxes)}"
        )
    # A pod that went (evicted, deleted) costs its own node's check, not the others'.
    went_away = name_vanished(
        {name: "before the check" for name in sandboxes if name not in before},
        {n: pod_life(p) for n, p in listed_sandboxes.items()},
    )
    errors: dict[str, str] = {}
    restarts = {name: restart_count(pod, KILLED) for name, pod in before.items()}
    counts_before = {name: pod_life(pod).restarts for name, pod in before.items()}
    netns_before: dict[str, NetnsId] = {}
    netns_after: dict[str, dict[str, NetnsId]] = {}

    def kill(own: ProbeClient, pod: str, _sandbox: Probe) -> None:
        info = require_ok(
            own.call(pod, KILLED, [{"op": "info"}])[0], pod=pod, container=KILLED, what="info"
        )
        netns_before[pod] = NetnsId.from_info(info)
        # The container may die before the exec reports back; the restart count decides.
        with contextlib.suppress(ProbeCallError):
            own.exec(
                pod,
                KILLED,
                ["python3", "-c", KILL_SCRIPT, str(info["pid"])],
                timeout=timeouts.exec_overhead,
            )

    def could_not_kill(sandbox: Probe, exc: ProbeCallError) -> None:
        errors[sandbox.name] = f"could not kill container {KILLED}: {exc}"

    in_parallel(
        probe_client, {n: sandboxes[n] for n in before}, kill, could_not_kill, max_parallel=16
    )
    waiting = [name for name in before if name not in errors]
    after: Mapping[str, client.V1Pod] = {}
    while waiting:
        try:
            after = wait_for_pods(
                core,
                namespace,
                waiting,
                timeout=timeouts.container_restart,
                condition=lambda p: (
                    restart_count(p, KILLED) > restarts[name_of(p)]
                    and container_running(p, KILLED)
                    and container_running(p, SURVIVOR)
                ),
                what=f"restarted (container {KILLED}) and running again (both containers)",
                timeouts=timeouts,
            )
            break
        except ProbeDeploymentError:
            # A pod taken away meanwhile costs its own node's check; the others wait on.
            lives = pod_lives(core, namespace, timeouts)
            why = f"while container {KILLED} restarted"
            vanished = {n: b for n in waiting if (b := blame_removal(n, why, lives)) is not None}
            if not vanished:
                raise
            went_away.update(vanished)
            waiting = [n for n in waiting if n not in vanished]

    # The restarted agent is asked itself whether it listens (one exec each), rather than
    # kubelet's readiness probe: probing every sandbox often enough to notice quickly would
    # cost every node an exec every few seconds for the whole run.
    # Then each container's network namespace: the survivor too, which kubelet restarts as
    # well when it had to make the pod a new sandbox.
    def await_agent(own: ProbeClient, pod: str, _sandbox: Probe) -> None:
        for container in (KILLED, SURVIVOR):
            result = own.exec(
                pod,
                container,
                ping_command(container, timeouts.container_restart / 2),
                timeout=timeouts.container_restart,
            )
            if result.returncode != 0:
                errors[pod] = (
                    f"the agent in container {container} does not answer after the restart: "
                    f"{result.stderr.strip()[-300:] or f'ping exited {result.returncode}'}"
                )
                return
        netns_after[pod] = {
            container: NetnsId.from_info(
                require_ok(
                    own.call(pod, container, [{"op": "info"}])[0],
                    pod=pod,
                    container=container,
                    what="info",
                )
            )
            for container in (KILLED, SURVIVOR)
        }

    def could_not_ask(sandbox: Probe, exc: ProbeCallError) -> None:
        errors[sandbox.name] = f"could not ask the restarted container {KILLED}: {exc}"

    in_parallel(
        probe_client, {n: sandboxes[n] for n in after}, await_agent, could_not_ask, max_parallel=16
    )
    after = {name: pod for name, pod in after.items() if name not in errors}
    if errors:
        errors = name_vanished(errors, pod_lives(core, namespace, timeouts))
    errors.update(went_away)
    outcomes = {
        o.target.source.pod: o
        for o in run_sweep(
            probe_client,
            [localhost_target(check, sandboxes[name]) for name in after],
            pods=lambda: pod_lives(core, namespace, timeouts),
        )
    }
    # Restart counts last: a survivor that kubelet restarted with a new sandbox has by now.
    lives = pod_lives(core, namespace, timeouts) or {}
    return {
        sandbox.node: SandboxRestart(
            node=sandbox.node,
            pod=name,
            ips_before=pod_ips(before[name]) if name in before else (),
            ips_after=pod_ips(after[name]) if name in after else (),
            localhost=outcomes.get(name),
            error=errors.get(name),
            netns_before=netns_before.get(name),
            netns_after=netns_after.get(name, {}).get(KILLED),
            survivor_netns=netns_after.get(name, {}).get(SURVIVOR),
            restarts_before=counts_before.get(name, {}),
            restarts_after=lives[name].restarts if name in lives else {},
        )
        for name, sandbox in sandboxes.items()
    }


def name_vanished(errors: Mapping[str, str], lives: Mapping[str, PodLife] | None) -> dict[str, str]:
    """``errors``, each behind its first cause where the pod itself went away
    (`conformance.kit.probes.lives.blame_removal`)."""
    return {pod: blame_removal(pod, error, lives) or error for pod, error in errors.items()}


def restart_sandboxes_once(
    run: RunInfo,
    check: str,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
    core: client.CoreV1Api,
) -> dict[str, SandboxRestart]:
    """`restart_sandboxes` once in the whole run (xdist workers read the result back); a
    failure is not repeated: later callers get the same `ProbeDeploymentError`."""
    return once(
        run,
        SANDBOXES_RECORD,
        lambda: restart_sandboxes(check, probe_map, probe_client, core),
        encode=lambda found: {node: r.to_dict() for node, r in found.items()},
        decode=lambda raw: {node: SandboxRestart.from_dict(r) for node, r in raw.items()},
        error=lambda cause: ProbeDeploymentError(f"the sandbox restarts failed: {cause}"),
    )
