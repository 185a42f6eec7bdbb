"""`conformance.kit.probes.client` without a cluster: the exec protocol (stdin closed on v5, the
payload as an argument before), the ``call`` batch (one list, or ``parallel`` lanes), batches
split by payload size with answers kept in order, typed errors, the helpers on addresses, and
the client against the real agent served by local processes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from local_agents import LocalAgent, LocalProbeClient

from conformance.kit.base.errors import (
    CouldNotTest,
    ProbeCallError,
    ProbeExecError,
    ProbeProtocolError,
)
from conformance.kit.base.settings import Timeouts
from conformance.kit.probes import client as probe_client
from conformance.kit.probes.client import ProbeClient

# --- the exec stream -------------------------------------------------------------------------


class FakeStream:
    """Stands in for kubernetes.stream.ws_client.WSClient (the calls the client makes)."""

    def __init__(self, stdout: str, stderr: str = "", status: str = "", v5: bool = True) -> None:
        self.subprotocol = "v5.channel.k8s.io" if v5 else "v4.channel.k8s.io"
        self.chunks = {1: [stdout[: len(stdout) // 2], stdout[len(stdout) // 2 :]], 2: [stderr]}
        self.status = status or json.dumps({"status": "Success"})
        self.updates = 0
        self.stdin: list[str] = []
        self.closed_channels: list[int] = []
        self.open = True

    def is_open(self) -> bool:
        return self.open and self.updates < 2

    def update(self, timeout: float = 0) -> None:
        self.updates += 1

    def read_stdout(self, timeout: float = 0) -> str:
        return self.chunks[1].pop(0) if self.chunks[1] else ""

    def read_stderr(self, timeout: float = 0) -> str:
        return self.chunks[2].pop(0) if self.chunks[2] else ""

    def read_channel(self, channel: int, timeout: float = 0) -> str:
        return self.status

    def write_stdin(self, data: str) -> None:
        self.stdin.append(data)

    def close_channel(self, channel: int) -> None:
        self.closed_channels.append(channel)

    def close(self) -> None:
        self.open = False


class EchoStream(FakeStream):
    """An agent that answers each request of the batch written on stdin with its ``op`` and
    ``i`` (whichever batch form arrived)."""

    def __init__(self) -> None:
        super().__init__("")

    def write_stdin(self, data: str) -> None:
        super().write_stdin(data)
        batch = json.loads(data)
        requests = batch["requests"] if isinstance(batch, dict) else batch
        answers = json.dumps([{"ok": True, "op": r["op"], "i": r.get("i")} for r in requests])
        self.chunks[1] = [answers]


def fake_client(
    monkeypatch: pytest.MonkeyPatch, streams: list[FakeStream], timeouts: Timeouts | None = None
) -> tuple[ProbeClient, list[list[str]]]:
    """A client whose execs open ``streams`` in turn; also returns every command opened."""
    opened: list[list[str]] = []

    def fake_open(self: Any, pod: str, container: str, command: list[str], stdin: bool) -> Any:
        opened.append(command)
        return streams.pop(0)

    monkeypatch.setattr(ProbeClient, "_open", fake_open)
    return ProbeClient(client.CoreV1Api(client.ApiClient()), "ns", timeouts or Timeouts()), opened


def test_call_sends_json_and_closes_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeStream(json.dumps([{"ok": True, "op": "info", "pid": 7}]))
    probes, opened = fake_client(monkeypatch, [stream])
    answer = probes.call_one("probe-n1", "a", {"op": "info"})
    assert answer["pid"] == 7
    assert opened[0][:3] == ["python3", "/netconform/client.py", "call"]
    assert "/tmp/netconform-agent-a.sock" in opened[0]
    assert json.loads(stream.stdin[0]) == [{"op": "info"}]
    assert stream.closed_channels == [0]


def test_call_without_v5_passes_the_payload_as_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeStream("", v5=False)
    second = FakeStream(json.dumps([{"ok": True, "op": "seen", "records": []}]))
    third = FakeStream(json.dumps([{"ok": True, "op": "info"}]))
    probes, opened = fake_client(monkeypatch, [first, second, third])
    probes.call_one("p", "b", {"op": "seen", "nonce": "x"})
    assert opened[1][:2] == ["/bin/sh", "-c"]
    assert json.loads(opened[1][4]) == [{"op": "seen", "nonce": "x"}]
    assert opened[1][5:8] == ["python3", "/netconform/client.py", "call"]
    # The next call goes straight to the argument form.
    probes.call_one("p", "b", {"op": "info"})
    assert len(opened) == 3
    assert opened[2][:2] == ["/bin/sh", "-c"]


def test_thread_twins_share_what_the_exec_protocol_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a server without v5 (Kubernetes before 1.30), learning it costs an exec that starts
    # an agent for nothing: a twin made for another thread must not pay it again.
    first = FakeStream("", v5=False)
    answers = [FakeStream(json.dumps([{"ok": True, "op": "info"}])) for _ in range(3)]
    probes, opened = fake_client(monkeypatch, [first, *answers])
    probes.call_one("p", "b", {"op": "info"})
    twin = probes.for_thread()
    try:
        twin.call_one("p", "b", {"op": "info"})
        twin.for_thread().call_one("p", "a", {"op": "info"})
    finally:
        twin.close()
    assert len(opened) == 4  # one learning exec, then one exec per call
    assert [command[:2] for command in opened[1:]] == [["/bin/sh", "-c"]] * 3


def test_call_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = json.dumps(
        {
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }
    )
    probes, _ = fake_client(
        monkeypatch,
        [
            FakeStream("", stderr="agent call: no serve process answers\n", status=failed),
            FakeStream("not json"),
            FakeStream(json.dumps([{"ok": True}, {"ok": True}])),
            FakeStream(json.dumps([{"op": "info"}])),
        ],
    )
    with pytest.raises(ProbeExecError, match="exited 3") as exited:
        probes.call_one("p", "a", {"op": "info"})
    assert "no serve process answers" in str(exited.value)
    assert (exited.value.pod, exited.value.container) == ("p", "a")
    with pytest.raises(ProbeProtocolError, match="no JSON"):
        probes.call_one("p", "a", {"op": "info"})
    with pytest.raises(ProbeProtocolError, match="2 responses for 1"):
        probes.call_one("p", "a", {"op": "info"})
    with pytest.raises(ProbeProtocolError, match="lacks 'ok'"):
        probes.call_one("p", "a", {"op": "info"})


def test_parallel_batches_name_their_lanes_and_get_a_deadline_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts = Timeouts(probe=2.0, capture_wait=1.0, exec_overhead=30.0)
    streams: list[FakeStream] = [EchoStream(), EchoStream(), EchoStream()]
    sent = list(streams)
    probes, opened = fake_client(monkeypatch, streams, timeouts)
    requests = [{"op": "connect", "i": i} for i in range(100)]

    answers = probes.call("p", "a", requests, parallel=500)  # more lanes than the agent runs
    assert [a["i"] for a in answers] == list(range(100))
    assert json.loads(sent[0].stdin[0]) == {
        "parallel": probe_client.MAX_PARALLEL_REQUESTS,
        "requests": requests,
    }
    # Two rounds of 64 lanes; the agent gives up a margin before the exec does.
    budget = timeouts.exec_budget(100, probe_client.MAX_PARALLEL_REQUESTS)
    assert budget == 30.0 + 2 * 3.0
    timeout_arg = opened[0][opened[0].index("--timeout") + 1]
    assert timeout_arg == f"{budget - probe_client.AGENT_TIMEOUT_MARGIN:.0f}"

    probes.call("p", "a", requests[:3])  # no parallel: a plain list, one after another
    assert json.loads(sent[1].stdin[0]) == requests[:3]
    assert opened[1][opened[1].index("--timeout") + 1] == f"{30.0 + 3 * 3.0 - 5:.0f}"

    probes.call("p", "a", requests[:3], parallel=0)  # 0 lanes: one after another too
    assert json.loads(sent[2].stdin[0]) == requests[:3]


def test_call_splits_big_batches_and_keeps_the_answers_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe_client, "MAX_PAYLOAD_BYTES", 400)
    requests = [{"op": "write_file", "i": i, "seed": "x" * 40} for i in range(20)]
    streams: list[FakeStream] = [EchoStream() for _ in range(20)]
    sent = list(streams)
    probes, opened = fake_client(monkeypatch, streams)
    answers = probes.call("p", "a", requests)
    assert [a["i"] for a in answers] == list(range(20))
    execs = len(opened)
    assert 1 < execs < 20
    payloads = [s.stdin[0] for s in sent[:execs]]
    assert all(len(p) <= 400 for p in payloads)
    assert [r for p in payloads for r in json.loads(p)] == requests


class BrokenStream(EchoStream):
    """The batch went in, then the stream ended without an exit status (a cut connection)."""

    def read_channel(self, channel: int, timeout: float = 0) -> str:
        return ""


def test_a_batch_cut_off_is_sent_again_renewed_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = [{"op": "connect", "i": i, "nonce": f"n-{i}"} for i in range(3)]
    streams: list[FakeStream] = [BrokenStream(), EchoStream(), BrokenStream(), EchoStream()]
    sent = list(streams)
    probes, _ = fake_client(monkeypatch, streams)

    answers = probes.call("p", "a", requests)  # the same batch again: one more try
    assert [a["i"] for a in answers] == [0, 1, 2]
    assert json.loads(sent[1].stdin[0]) == json.loads(sent[0].stdin[0]) == requests

    renewed: list[list[str]] = []

    def renew(batch: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        renewed.append([str(r["nonce"]) for r in batch])
        return [{**r, "nonce": f"{r['nonce']}.1"} for r in batch]

    answers = probes.call("p", "a", requests, renew=renew)
    assert [a["i"] for a in answers] == [0, 1, 2]
    assert json.loads(sent[2].stdin[0]) == requests  # the first try as given
    assert [r["nonce"] for r in json.loads(sent[3].stdin[0])] == ["n-0.1", "n-1.1", "n-2.1"]
    assert renewed == [["n-0", "n-1", "n-2"]]  # once, for the one resend


# --- payload splitting -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
request_lists = st.lists(
    st.fixed_dictionaries({"op": st.sampled_from(["connect", "seen"]), "data": json_values}),
    max_size=30,
)


@given(request_lists, st.integers(min_value=100, max_value=3000))
def test_split_keeps_order_and_every_chunk_under_the_limit(
    requests: list[dict[str, Any]], limit: int
) -> None:
    chunks = probe_client.split_by_payload(requests, limit)
    assert [r for chunk in chunks for r in chunk] == requests  # order kept, nothing lost
    assert all(chunks)  # no empty exec
    for chunk in chunks:
        if len(chunk) > 1:
            # Whichever form goes out (a list, or the parallel envelope), it fits.
            envelope = {"parallel": probe_client.MAX_PARALLEL_REQUESTS, "requests": chunk}
            assert len(json.dumps(chunk)) <= limit
            assert len(json.dumps(envelope)) <= limit
    if len(json.dumps(requests)) + 64 <= limit:
        assert len(chunks) <= 1  # what fits goes in one exec


def test_a_lone_oversized_request_goes_alone() -> None:
    small: Mapping[str, Any] = {"op": "seen", "nonce": "n"}
    huge: Mapping[str, Any] = {"op": "write_file", "seed": "x" * 5000}
    chunks = probe_client.split_by_payload([small, small, huge, small], 1000)
    assert chunks == [[small, small], [huge], [small]]
    assert probe_client.split_by_payload([huge, huge], 1000) == [[huge], [huge]]
    assert probe_client.split_by_payload([], 1000) == []


# --- status and addresses ----------------------------------------------------------------------


def test_exec_status_parsing() -> None:
    assert probe_client.parse_exec_status('{"status": "Success"}') == (0, "")
    code, message = probe_client.parse_exec_status(
        '{"status": "Failure", "message": "exec: python3: not found"}'
    )
    assert code is None
    assert "not found" in message
    assert probe_client.parse_exec_status("")[0] is None
    exited = json.dumps(
        {"status": "Failure", "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}
    )
    assert probe_client.parse_exec_status(exited)[0] == 2
    assert probe_client.parse_exec_status("garbage") == (None, "garbage")


def test_address_helpers() -> None:
    assert probe_client.address_of_family(["10.1.0.5/24", "fd00::5/64"], 6) == "fd00::5"
    assert probe_client.address_of_family(["bogus", "10.1.0.5"], 4) == "10.1.0.5"
    assert probe_client.address_of_family(["10.1.0.5"], 6) is None
    assert probe_client.canonical_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert probe_client.canonical_ip("fe80::1%eth0") == "fe80::1"
    assert probe_client.canonical_ip("FD00:0::1") == "fd00::1"
    assert probe_client.canonical_ip("nonsense") is None
    assert probe_client.canonical_ip(None) is None
    assert probe_client.canonical_ip("") is None


def test_require_ok_is_could_not_test_naming_the_container() -> None:
    answer = {"ok": True, "op": "seen", "records": []}
    assert probe_client.require_ok(answer, pod="p", container="a", what="read records") is answer
    with pytest.raises(ProbeCallError, match=r"read records: agent answered error 'boom'") as err:
        probe_client.require_ok(
            {"ok": False, "error": "boom"}, pod="p", container="a", what="read records"
        )
    assert isinstance(err.value, CouldNotTest)
    assert "[pod p, container a]" in str(err.value)


# --- against the real agent (local processes, no cluster) ------------------------------------


def local_client(probe: float = 2.0) -> LocalProbeClient:
    return LocalProbeClient(client.CoreV1Api(client.ApiClient()), "ns", Timeouts(probe=probe))


def test_requests_against_the_real_agent(local_agents: dict[str, LocalAgent]) -> None:
    probes = local_client()
    taken = probes.call_one(
        "pod",
        "b",
        {"op": "try_bind", "proto": "tcp", "host": "", "port": local_agents["a"].tcp_port},
    )
    assert taken["bound"] is False
    assert taken["errno"] == "EADDRINUSE"
    info, addresses = probes.call("pod", "a", [{"op": "info"}, {"op": "addresses"}])
    assert isinstance(info["pid"], int)
    assert any("127.0.0.1/8" in i["addresses"] for i in addresses["interfaces"])


def test_parallel_and_split_batches_against_the_real_agent(
    local_agents: dict[str, LocalAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = local_client()
    b = local_agents["b"]
    requests = [
        {
            "op": "connect",
            "proto": proto,
            "host": "127.0.0.1",
            "port": b.tcp_port if proto == "tcp" else b.udp_port,
            "nonce": f"nc-unit-{proto}-{i}",
            "timeout": 2.0,
        }
        for i in range(6)
        for proto in ("tcp", "udp")
    ]
    answers = probes.call("pod", "a", requests, parallel=4)
    assert [a["ok"] for a in answers] == [True] * len(requests), answers
    assert {a["peer_seen"] for a in answers} == {"127.0.0.1"}
    # Split into several execs, the answers still come back in request order.
    monkeypatch.setattr(probe_client, "MAX_PAYLOAD_BYTES", 400)
    assert len(probe_client.split_by_payload(requests, 400)) > 1
    seen = probes.call("pod", "b", [{"op": "seen", "nonce": r["nonce"]} for r in requests])
    assert [s["records"][0]["proto"] for s in seen] == [r["proto"] for r in requests]
