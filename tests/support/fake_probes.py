"""One fake probe client for the kit's unit tests, answering agent batches like a small cluster
would: three nodes in a ring (``RING``), a probe pod on each, exchanges, captures, loss
measurements and a shared volume per pod. Built on `RecordingProbeClient`, it records every
batch and fails the (pod, container) pairs listed in ``broken``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recording_agents import RecordingProbeClient

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.reachability import Endpoint, Target
from conformance.kit.probes.client import ProbeResponse
from conformance.kit.probes.model import ProbeMap

NODES = ("node-1", "node-2", "node-3")
# A ring over the three nodes: every node once a source and once a destination.
RING = (NodePair("node-1", "node-2"), NodePair("node-2", "node-3"), NodePair("node-3", "node-1"))
POD_IP = {"probe-node-1": "10.244.0.2", "probe-node-2": "10.244.1.2", "probe-node-3": "10.244.2.2"}
NODE_IP = {"node-1": "192.168.77.1", "node-2": "192.168.77.2", "node-3": "192.168.77.3"}
POD_BY_IP = {ip: pod for pod, ip in POD_IP.items()}
TIMEOUTS = Timeouts(probe=0.1, reach_attempts=3, capture_wait=0.1)
NO_PROBES = ProbeMap(namespace="ns", probes=())


def ring_target(proto: str, pair: NodePair) -> Target:
    """The pod-to-pod target of one ring pair, as test_no_snat plans it."""
    src, dst = f"probe-{pair.src}", f"probe-{pair.dst}"
    return Target(
        check="test_no_snat",
        proto=proto,
        family=4,
        source=Endpoint(src, "a", pair.src),
        destination=Endpoint(dst, "a", pair.dst),
        host=POD_IP[dst],
        port=None if proto == "icmp" else 8080,
        allowed_sources=(POD_IP[src],),
    )


def ring_targets(protos: Sequence[str] = ("tcp", "udp", "icmp")) -> list[Target]:
    return [ring_target(proto, pair) for proto in protos for pair in RING]


@dataclass
class FakeProbeClient(RecordingProbeClient):
    """Answers agent batches like a cluster would. ``failures[(src_pod, host)]`` is how many
    tries fail (ETIMEDOUT) before one is answered; ``snat_nodes``: traffic leaving these nodes
    shows the node's IP; ``broken``: (pod, container) whose exec fails; ``refuse_captures``:
    pods whose agent answers capture_start with an error; ``lost[(src_pod, host)]``: probes
    a loss measurement loses (of its ``count``). Listeners and captures record every exchange
    that arrived, by nonce; a loss measurement's requests are recorded as ``connect*`` and
    ``icmp*``. Each pod has one shared volume (``files``, as an emptyDir) for ``write_file``
    and ``read_file``; ``info`` answers which container was asked."""

    timeouts: Timeouts = TIMEOUTS
    files: dict[tuple[str, str], str] = field(default_factory=dict)  # (pod, path) -> sha256
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    snat_nodes: frozenset[str] = frozenset()
    refuse_captures: frozenset[str] = frozenset()
    #: pod -> how many of its captures see nothing (a sniffer that fell behind)
    blind_captures: dict[str, int] = field(default_factory=dict)
    lost: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (src_pod, host) -> what a loss measurement's own socket says it dropped
    socket_drops: dict[tuple[str, str], int] = field(default_factory=dict)
    #: pod -> UDP datagrams its listener drops itself during each loss round (then none)
    listener_drops: dict[str, list[int]] = field(default_factory=dict)
    _drops: dict[str, int] = field(default_factory=dict)
    parallel: list[int | None] = field(default_factory=list)  # of every probing batch
    #: (source pod, host, parallel of its batch) of every loss measurement
    measured: list[tuple[str, str, int | None]] = field(default_factory=list)
    _tries: dict[tuple[str, str], int] = field(default_factory=dict)
    # destination pod -> what arrived there: {nonce, peer, proto}
    _arrived: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def call(
        self,
        pod: str,
        container: str,
        requests: Sequence[Mapping[str, Any]],
        *,
        parallel: int | None = None,
        timeout: float | None = None,
    ) -> list[ProbeResponse]:
        self.record(
            pod, container, [{**r, "op": f"{r['op']}*"} if r.get("count") else r for r in requests]
        )
        if requests and requests[0]["op"] in ("connect", "icmp"):
            self.parallel.append(parallel)
        return [self._answer(pod, container, dict(r), parallel) for r in requests]

    def _answer(
        self, pod: str, container: str, request: dict[str, Any], parallel: int | None
    ) -> ProbeResponse:
        op = request["op"]
        if op == "write_file":
            digest = hashlib.sha256(str(request["seed"]).encode()).hexdigest()
            with self._lock:
                self.files[(pod, str(request["name"]))] = digest
            return {"ok": True, "op": op, "sha256": digest}
        if op == "read_file":
            found = self.files.get((pod, str(request["name"])))
            if found is None:
                return {"ok": False, "op": op, "errno": "ENOENT"}
            return {"ok": True, "op": op, "sha256": found}
        if op == "info":
            return {"ok": True, "op": op, "container": container}
        if op == "capture_start":
            if pod in self.refuse_captures:
                return {"ok": False, "op": op, "error": "no scapy"}
            return {"ok": True, "op": op, "capture_id": f"cap-{pod}"}
        if op == "addresses":
            node = pod.removeprefix("host-")
            return {
                "ok": True,
                "op": op,
                "interfaces": [
                    {"name": "eth0", "addresses": [f"{NODE_IP[node]}/24", "fe80::1/64"]},
                    {"name": "cni0", "addresses": ["10.244.9.1/24"]},
                ],
            }
        if op == "drops":
            # Read before and after each loss round: the count grows by the round's figure.
            with self._lock:
                count = self._drops.get(pod, 0)
                self._drops[pod] = count + 1
            rounds = self.listener_drops.get(pod, [])
            done = count // 2 + count % 2  # rounds begun
            dropped = sum(rounds[:done])
            return {"ok": True, "op": op, "udp": dropped, "tcp_listen": 0}
        if op in ("connect", "icmp"):
            key = (pod, str(request["host"]))
            with self._lock:
                self._tries[key] = self._tries.get(key, 0) + 1
                failing = self._tries[key] <= self.failures.get(key, 0)
            if failing:
                return {"ok": False, "op": op, "errno": "ETIMEDOUT", "error": "timed out"}
            node = pod.removeprefix("probe-").removeprefix("host-")
            if pod.startswith("host-"):
                source = "10.244.9.1"  # a node's stack sends from its bridge to local pods
            elif node in self.snat_nodes:
                source = NODE_IP[node]
            else:
                source = POD_IP[pod]
            if request.get("count"):
                sent, lost = int(request["count"]), self.lost.get(key, 0)
                with self._lock:
                    self.measured.append((pod, str(request["host"]), parallel))
                measured = {"op": op, "count": sent, "sent": sent, "lost": lost}
                measured["socket_drops"] = self.socket_drops.get(key, 0)
                measured.update(answered=sent - lost, errors={"ETIMEDOUT": lost} if lost else {})
                if lost == sent:
                    return {**measured, "ok": False, "errno": "ETIMEDOUT", "error": "none"}
                return {**measured, "ok": True, "peer_seen": source, "peers": [source]}
            arrival = {
                "nonce": str(request["nonce"]),
                "peer": source,
                "proto": str(request.get("proto", op)),
                "dst": str(request["host"]),
            }
            with self._lock:
                self._arrived.setdefault(POD_BY_IP[str(request["host"])], []).append(arrival)
            return {"ok": True, "op": op, "peer_seen": source}
        arrived = (
            [
                a
                for a in self._arrived.get(pod, [])
                if a["nonce"].startswith(request["nonce_prefix"])
            ]
            if "nonce_prefix" in request
            else self._arrived.get(pod, [])
        )
        if op == "seen":
            records = [
                {"nonce": a["nonce"], "peer": a["peer"], "proto": a["proto"]} for a in arrived
            ]
            return {"ok": True, "op": op, "records": records}
        if op == "capture_result":
            assert request["capture_id"] == f"cap-{pod}"
            with self._lock:
                blind = self.blind_captures.get(pod, 0)
                self.blind_captures[pod] = blind - 1
            if blind > 0:
                return {"ok": True, "op": op, "packets": []}
            packets = [{"nonce": a["nonce"], "src": a["peer"], "dst": a["dst"]} for a in arrived]
            return {"ok": True, "op": op, "packets": packets}
        raise AssertionError(f"unexpected op {op}")
