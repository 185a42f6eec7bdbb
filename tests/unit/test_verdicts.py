"""`conformance.kit.verdicts.judge`: one place judges every reachability exchange. `problems` for
each way an exchange breaks the rule (or has no verdict), and `ItemExchanges.assert_rule`
turning an item's outcomes into a pass, a failure naming the broken exchanges and the run's
failed pairs, a skip, or could-not-test, with tries, losses and passes on retry recorded."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from conformance.kit.base.errors import CouldNotTest, ProbeCallError
from conformance.kit.base.settings import DEFAULT_MAX_LOSS
from conformance.kit.exchanges.reachability import (
    LOSS_PROBES,
    Endpoint,
    Exchange,
    Loss,
    Outcome,
    Sweep,
    Target,
    Unplanned,
    evidence_of,
    exchange_of,
    merge_looks,
)
from conformance.kit.verdicts.failures import (
    ATTEMPTS_PROPERTY,
    FLAKY_PROPERTY,
    LOSS_PROPERTY,
    LOSS_RATIO_PROPERTY,
    LOSSES_PROPERTY,
    PROBES_LOST_PROPERTY,
    PROBES_PROPERTY,
    RuleBroken,
    RuleFailure,
)
from conformance.kit.verdicts.judge import ItemExchanges, flaky_text, problems

POD_IP = {"node-1": "10.244.0.2", "node-2": "10.244.1.2", "node-3": "10.244.2.2"}
NODE_IP = {"node-1": "192.168.77.1", "node-2": "192.168.77.2", "node-3": "192.168.77.3"}
RULE = "pods on any node MUST reach pods on every node without NAT"


def target(
    src: str = "node-1",
    dst: str = "node-2",
    proto: str = "tcp",
    *,
    capture: bool = True,
    allowed: tuple[str, ...] | None = None,
    check: str = "test_no_snat",
) -> Target:
    return Target(
        check=check,
        proto=proto,
        family=4,
        source=Endpoint(f"probe-{src}", "a", src),
        destination=Endpoint(f"probe-{dst}", "a", dst),
        host=POD_IP[dst],
        port=None if proto == "icmp" else 8080,
        capture=capture,
        allowed_sources=allowed if allowed is not None else (POD_IP[src],),
    )


def outcome(
    planned: Target,
    *,
    reached: bool = True,
    seen: str | None = "own",
    listener: tuple[str, ...] | str = "own",
    captured: tuple[str, ...] | str = "own",
    capture_error: str | None = None,
    attempts: int = 1,
    first_error: str | None = None,
    error: str | None = None,
    allowed: tuple[str, ...] | None = None,
    judge_sources: bool = True,
) -> Outcome:
    """An outcome of ``planned``: by default answered on the first try, every view showing the
    source pod's own IP ("own"). The sources allowed are the target's unless ``allowed`` says
    otherwise, or none are judged (``judge_sources`` False)."""
    own = POD_IP[planned.source.node]
    response: dict[str, Any] = {
        "ok": reached,
        "op": "icmp" if planned.proto == "icmp" else "connect",
    }
    if not reached:
        response.update(errno="ETIMEDOUT", error="timed out")
    elif seen is not None:
        response["peer_seen"] = own if seen == "own" else seen
    exchange = Exchange(
        attempts=attempts,
        client_response=response,
        listener_peers=(own,) if listener == "own" else tuple(listener),
        captured_sources=(own,) if captured == "own" else tuple(captured),
        capture_error=capture_error,
    )
    return Outcome(
        target=planned,
        nonce="nc-1",
        attempts=attempts,
        exchange=None if error is not None else exchange,
        first_error=first_error,
        error=error,
        max_attempts=3,
        allowed_sources=(allowed or planned.allowed_sources) if judge_sources else None,
    )


# --- problems ----------------------------------------------------------------------------------


def test_an_exchange_that_holds_has_no_problems() -> None:
    for proto in ("tcp", "udp", "icmp"):
        assert problems(outcome(target(proto=proto))) == []


def test_not_reached() -> None:
    found = problems(outcome(target(), reached=False, attempts=3, listener=(), captured=()))
    assert found == ["no answer after 3 attempt(s): timed out"]


def test_no_verdict_without_an_answer_from_the_agents() -> None:
    # The agents could not be asked: could not test, never a broken rule.
    assert problems(outcome(target(), error="exec failed: container not running")) == []
    broken_but_unasked = outcome(target(), listener=("1.2.3.4",))
    unasked = Outcome(target=broken_but_unasked.target, nonce="n", error="exec failed")
    assert problems(unasked) == []


def test_nobody_recorded_although_something_answered() -> None:
    # Another pod holds the destination's IP, or a proxy answered.
    tcp = problems(outcome(target(), seen=None, listener=()))
    assert tcp == ["probe-node-2 recorded nothing although something answered at its address"]
    icmp = problems(outcome(target(proto="icmp"), listener=()))
    assert icmp == tcp


def test_foreign_listener_source() -> None:
    natted = NODE_IP["node-1"]
    assert problems(outcome(target(), listener=(natted,), seen=natted)) == [
        f"listener saw source ['{natted}']"
    ]
    # What the destination reported back to the client counts as the listener's view too.
    assert problems(outcome(target(), seen=natted)) == [
        f"listener saw source ['{POD_IP['node-1']}', '{natted}']"
    ]
    # ICMP echo replies carry no peer: only the raw socket's record counts.
    assert problems(outcome(target(proto="icmp"), seen=natted)) == []


def test_capture_failure() -> None:
    found = problems(outcome(target(), captured=(), capture_error="sniffer died"))
    assert found == ["capture failed: sniffer died"]


def test_capture_foreign_source_or_nothing() -> None:
    natted = NODE_IP["node-1"]
    assert problems(outcome(target(), captured=(natted,))) == [
        f"capture in probe-node-2 saw source ['{natted}']"
    ]
    assert problems(outcome(target(), captured=())) == [
        "capture in probe-node-2 saw source nothing"
    ]
    # Without a capture planned, only the listener judges.
    assert problems(outcome(target(capture=False), captured=())) == []


def test_allowed_none_judges_reachability_only() -> None:
    anything = outcome(
        target(), listener=("1.2.3.4",), seen="5.6.7.8", captured=(), judge_sources=False
    )
    assert problems(anything) == []
    assert problems(outcome(target(), reached=False, judge_sources=False)) == [
        "no answer after 1 attempt(s): timed out"
    ]


def test_the_outcomes_own_allowed_sources_judge() -> None:
    # The sweep resolves what is allowed (a node's interface addresses, for a node source).
    node_source = outcome(
        target(allowed=(NODE_IP["node-1"],)),
        listener=("10.0.0.9",),
        seen="10.0.0.9",
        captured=("10.0.0.9",),
        allowed=(NODE_IP["node-1"], "10.0.0.9"),
    )
    assert problems(node_source) == []


def test_full_size_exchanges_must_arrive_intact() -> None:
    full = dataclasses.replace(target(proto="udp"), full_size=True)
    lost = outcome(full, reached=False, attempts=3, listener=(), captured=())
    assert problems(lost) == ["not delivered intact after 3 attempt(s): timed out"]
    # What the agent said about sizes goes with it.
    assert lost.exchange is not None
    response = {"ok": False, "error": "EMSGSIZE", "size": 1500, "mtu": 1400}
    said = dataclasses.replace(
        lost, exchange=dataclasses.replace(lost.exchange, client_response=response)
    )
    assert problems(said) == [
        "not delivered intact after 3 attempt(s): EMSGSIZE (packet size 1500, MTU here 1400)"
    ]
    # Even with no sources to judge, a full-size answer nobody recorded is not a delivery.
    unseen = outcome(full, listener=(), judge_sources=False)
    assert problems(unseen) == ["probe-node-2 recorded nothing although the sender saw an answer"]
    assert problems(outcome(full, judge_sources=False)) == []


def test_flaky_text() -> None:
    retried = outcome(target(), attempts=2, first_error="ETIMEDOUT timed out")
    assert flaky_text(retried) == "passed on attempt 2 of 3 (first: ETIMEDOUT timed out)"
    assert flaky_text(outcome(target())) is None
    assert flaky_text(outcome(target(), reached=False, attempts=3)) is None


# --- ItemExchanges.assert_rule ------------------------------------------------------------------


def judge(
    outcomes: list[Outcome],
    *,
    unplanned: Unplanned | None = None,
    run: list[Outcome] | None = None,
    strict: bool = False,
    max_loss: float = DEFAULT_MAX_LOSS / 100,
) -> ItemExchanges:
    everything = run if run is not None else outcomes
    return ItemExchanges(
        outcomes=outcomes,
        unplanned=unplanned,
        sweep=Sweep(outcomes={o.target.key: o for o in everything}),
        user_properties=[],
        strict=strict,
        max_loss=max_loss,
    )


def test_a_holding_item_passes_and_records_its_tries() -> None:
    item = judge([outcome(target()), outcome(target("node-1", "node-3"))])
    item.assert_rule(RULE)
    assert item.user_properties == [(ATTEMPTS_PROPERTY, "2"), (LOSSES_PROPERTY, "0")]


def test_a_broken_item_fails_naming_the_exchange_and_the_run() -> None:
    natted = NODE_IP["node-2"]
    broken = outcome(
        target("node-2", "node-3"), listener=(natted,), seen=natted, captured=(natted,)
    )
    fine = outcome(target("node-2", "node-1"))
    # Elsewhere in the run, node-2's other traffic was NATed too.
    elsewhere = outcome(target("node-2", "node-1", "udp"), listener=(natted,), seen=natted)
    item = judge([broken, fine], run=[broken, fine, elsewhere, outcome(target("node-3", "node-1"))])
    with pytest.raises(RuleBroken) as failed:
        item.assert_rule(RULE)
    text = str(failed.value)
    # The judge's verdict is data; the message people read is drawn from it.
    failure = failed.value.failure
    assert text == failure.text()
    assert failure.rule == RULE
    assert failure.protocol == "tcp over IPv4"
    assert failure.nodes == ("node-2", "node-3", "node-1")
    assert failure.observed.startswith("1 of 2 exchanges broken: tcp probe-node-2/a")
    assert failure.details[0] == broken.describe()
    assert failure.details[-1].startswith("across the run: node-2 is in all 2 failed pairs")
    assert text.startswith(f"RULE BROKEN: {RULE}")
    assert "protocol: tcp over IPv4" in text
    assert (
        "observed: 1 of 2 exchanges broken: tcp probe-node-2/a -> probe-node-3/a at "
        f"10.244.2.2:8080: listener saw source ['{natted}'], capture in probe-node-3 saw source "
        f"['{natted}']"
    ) in text
    assert f"the destination seeing only ['{POD_IP['node-2']}'] as the source" in text
    assert broken.describe() in text
    assert (
        "across the run: node-2 is in all 2 failed pairs of test_no_snat in this run "
        "(as source 2); other nodes: node-1 in 1 (as destination 1), "
        "node-3 in 1 (as destination 1)"
    ) in text
    assert item.user_properties[:2] == [(ATTEMPTS_PROPERTY, "2"), (LOSSES_PROPERTY, "0")]


def test_the_check_may_say_what_it_expected() -> None:
    item = judge([outcome(target(), reached=False, attempts=3)])
    with pytest.raises(pytest.fail.Exception, match="expected: an answer from the peer"):
        item.assert_rule(RULE, expected="an answer from the peer")


def test_unplanned_is_a_skip() -> None:
    item = judge([], unplanned=Unplanned("no IPv6 pod IP on probe-node-1"))
    with pytest.raises(pytest.skip.Exception, match="no IPv6 pod IP on probe-node-1"):
        item.assert_rule(RULE)
    assert item.user_properties == []


def test_unplanned_broken_is_a_failure() -> None:
    item = judge([], unplanned=Unplanned("the node has no pod CIDR of IPv4", broken=True))
    with pytest.raises(RuleBroken) as failed:
        item.assert_rule(RULE)
    assert failed.value.failure == RuleFailure(
        rule=RULE, expected="traffic", observed="the node has no pod CIDR of IPv4"
    )
    text = str(failed.value)
    assert text.startswith(f"RULE BROKEN: {RULE}")
    assert "expected: traffic" in text
    assert "observed: the node has no pod CIDR of IPv4" in text


def test_an_exchange_without_answer_from_the_agents_is_could_not_test() -> None:
    unasked = outcome(target("node-1", "node-3"), error="exec failed: container not running")
    # Even beside a broken exchange: without every view there is no verdict on the item.
    broken = outcome(target(), reached=False, attempts=3)
    item = judge([broken, unasked])
    with pytest.raises(ProbeCallError) as raised:
        item.assert_rule(RULE)
    assert isinstance(raised.value, CouldNotTest)
    assert str(raised.value) == (
        "tcp probe-node-1/a -> probe-node-3/a at 10.244.2.2:8080: "
        "exec failed: container not running"
    )
    assert item.user_properties == []


def test_a_pass_on_retry_passes_and_is_recorded_as_flaky() -> None:
    retried = outcome(target(), attempts=2, first_error="ETIMEDOUT timed out")
    one = judge([retried])
    one.assert_rule(RULE)
    assert dict(one.user_properties)[FLAKY_PROPERTY] == (
        "passed on attempt 2 of 3 (first: ETIMEDOUT timed out)"
    )
    # With several exchanges, each flaky one is named by its destination.
    several = judge([outcome(target("node-1", "node-3")), retried])
    several.assert_rule(RULE)
    assert dict(several.user_properties)[FLAKY_PROPERTY] == (
        "probe-node-2: passed on attempt 2 of 3 (first: ETIMEDOUT timed out)"
    )


def test_strict_fails_a_pass_on_retry() -> None:
    retried = outcome(target(), attempts=2, first_error="ETIMEDOUT timed out")
    item = judge([retried], strict=True)
    with pytest.raises(pytest.fail.Exception) as failed:
        item.assert_rule(RULE)
    assert (
        "passed on attempt 2 of 3 (first: ETIMEDOUT timed out) "
        "(--strict: a pass on retry counts as broken)"
    ) in str(failed.value)
    assert FLAKY_PROPERTY not in dict(item.user_properties)


def test_attempts_and_losses_count_every_try() -> None:
    first_try = outcome(target("node-1", "node-2"))
    third_try = outcome(target("node-1", "node-3"), attempts=3, first_error="ETIMEDOUT")
    never = outcome(target("node-2", "node-1"), reached=False, attempts=3)
    item = judge([first_try, third_try, never])
    with pytest.raises(pytest.fail.Exception):
        item.assert_rule(RULE)
    # 1 + 3 + 3 tries; lost: none, the two before the answer, and all three.
    assert item.user_properties == [(ATTEMPTS_PROPERTY, "7"), (LOSSES_PROPERTY, "5")]


# --- loss ---------------------------------------------------------------------------------------


def measured(planned: Target, lost: int, sent: int = LOSS_PROBES, **fields: Any) -> Outcome:
    """An outcome of ``planned`` that held, whose loss measurement lost ``lost`` of ``sent``."""
    held = outcome(planned)
    assert held.exchange is not None
    loss = Loss(sent=sent, lost=lost, errors={"ETIMEDOUT": lost} if lost else {}, **fields)
    return dataclasses.replace(held, exchange=dataclasses.replace(held.exchange, loss=loss))


def binomial_at_most(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_the_default_threshold_fails_20_percent_loss_and_keeps_healthy_pairs() -> None:
    """The statistics behind the defaults (docs/architecture.md, "Loss"): with 100 probes and
    --max-loss 5, an exchange fails from 6 lost on."""
    allowed = math.floor(LOSS_PROBES * DEFAULT_MAX_LOSS / 100)
    assert allowed == 5
    # A pair losing 20 % of its packets passes with a chance below 2e-5 per exchange...
    assert binomial_at_most(allowed, LOSS_PROBES, 0.20) < 2e-5
    # ...while a background loss of 0.5 % fails an exchange with a chance below 2e-5.
    assert 1 - binomial_at_most(allowed, LOSS_PROBES, 0.005) < 2e-5
    ratio = DEFAULT_MAX_LOSS / 100
    assert problems(measured(target(), allowed), ratio) == []
    (found,) = problems(measured(target(), allowed + 1), ratio)
    assert found == (
        "lost more than the 5 % --max-loss allows: 6 of 100 probes lost (6.0 %); failed: "
        "ETIMEDOUT 6"
    )


def test_a_lossy_pass_records_its_loss_and_strict_fails_any_loss() -> None:
    item = judge([measured(target(), 3)])
    item.assert_rule(RULE)
    properties = dict(item.user_properties)
    assert properties[PROBES_PROPERTY] == "100"
    assert properties[PROBES_LOST_PROPERTY] == "3"
    assert properties[LOSS_RATIO_PROPERTY] == "0.0300"
    assert properties[LOSS_PROPERTY] == "3 of 100 probes lost (3.0 %); failed: ETIMEDOUT 3"
    strict = judge([measured(target(), 1)], max_loss=0.0)
    with pytest.raises(pytest.fail.Exception) as failed:
        strict.assert_rule(RULE)
    text = str(failed.value)
    assert "lost more than the 0 % --max-loss allows: 1 of 100 probes lost (1.0 %)" in text
    assert "at most 0 % of each exchange's probes lost (--max-loss)" in text
    assert judge([measured(target(), 0)], max_loss=0.0).assert_rule(RULE) is None


def test_the_worst_exchange_decides_and_is_the_items_ratio() -> None:
    host_pair = [measured(target("node-1", "node-2"), 8), measured(target("node-1", "node-3"), 0)]
    item = judge(host_pair, max_loss=0.05)
    with pytest.raises(pytest.fail.Exception):
        item.assert_rule(RULE)
    properties = dict(item.user_properties)
    assert (properties[PROBES_PROPERTY], properties[PROBES_LOST_PROPERTY]) == ("200", "8")
    assert properties[LOSS_RATIO_PROPERTY] == "0.0800"
    assert properties[LOSS_PROPERTY].startswith("probe-node-1/a -> probe-node-2/a: 8 of 100")


def test_tcp_loss_counts_connections_answered_after_a_retransmission() -> None:
    tcp = measured(target(), 7, retransmitted=7)
    (found,) = problems(tcp, 0.05)
    assert "7 of 100 probes lost (7.0 %), 7 answered only after a TCP retransmission" in found


def test_a_loss_the_destination_may_have_dropped_itself_could_not_test() -> None:
    """Probes lost while the destination's listener dropped some itself, measurement after
    measurement: whose loss it is cannot be told, so no verdict; beside a broken exchange the
    item still fails."""
    doubtful = measured(target(), 9, endpoint_drops=40, measurements=3)
    with pytest.raises(CouldNotTest) as raised:
        judge([doubtful]).assert_rule(RULE)
    assert "the ends themselves dropped 40 datagrams or connections" in str(raised.value)
    assert "in each of 3 measurements: the network's share is unknown" in str(raised.value)
    assert problems(doubtful) == []
    # Under the threshold the drops change nothing: a lossy pass.
    judge([measured(target(), 2, endpoint_drops=40)]).assert_rule(RULE)
    natted = outcome(target("node-1", "node-3"), listener=(NODE_IP["node-1"],))
    with pytest.raises(pytest.fail.Exception):
        judge([doubtful, natted]).assert_rule(RULE)


def test_an_item_with_no_exchange_could_not_test() -> None:
    """Nothing sent, nothing held: never a pass."""
    item = judge([])
    with pytest.raises(CouldNotTest, match="planned no exchange, so nothing was checked"):
        item.assert_rule(RULE)


# --- evidence accumulates -----------------------------------------------------------------------


def test_a_nat_seen_in_the_first_look_is_not_forgotten_by_a_clean_second() -> None:
    natted = NODE_IP["node-1"]
    first = outcome(target(), listener=(natted,), captured=())
    second = outcome(target())
    assert first.exchange is not None
    assert second.exchange is not None
    merged = merge_looks(first.exchange, second.exchange)
    assert merged.captures == 2
    assert set(merged.listener_peers) == {natted, POD_IP["node-1"]}
    found = problems(dataclasses.replace(first, exchange=merged))
    assert found == [f"listener saw source ['{POD_IP['node-1']}', '{natted}']"]
    # And the other way round: a NAT the second look's capture saw fails the exchange too.
    caught_later = outcome(target(), captured=(natted,))
    assert caught_later.exchange is not None
    merged = merge_looks(second.exchange, caught_later.exchange)
    assert problems(dataclasses.replace(second, exchange=merged)) == [
        f"capture in probe-node-2 saw source ['{POD_IP['node-1']}', '{natted}']"
    ]


def test_a_capture_that_worked_in_either_look_counts() -> None:
    failed_capture = outcome(target(), captured=(), capture_error="sniffer died")
    fine = outcome(target())
    assert failed_capture.exchange is not None
    assert fine.exchange is not None
    merged = merge_looks(failed_capture.exchange, fine.exchange)
    assert merged.capture_error is None
    assert problems(dataclasses.replace(failed_capture, exchange=merged)) == []
    both_failed = merge_looks(failed_capture.exchange, failed_capture.exchange)
    assert both_failed.capture_error == "sniffer died"


def test_a_nat_or_wrong_answer_in_any_try_fails_the_exchange() -> None:
    natted = NODE_IP["node-1"]
    own = POD_IP["node-1"]
    planned = target()
    tries = [
        {"ok": False, "op": "connect", "wrong_answer": True, "error": "tcp x answered b'HTTP'"},
        {"ok": True, "op": "connect", "peer_seen": own},
    ]
    loss = {"ok": True, "op": "connect", "count": 100, "sent": 100, "lost": 0}
    loss["peers"] = [own, natted]  # one probe of the hundred was NATed
    exchange = exchange_of(
        planned,
        attempts=2,
        response=tries[-1],
        records=[{"proto": "tcp", "peer": own}],
        packets=[{"src": own, "dst": planned.host}],
        capture_error=None,
        answers=[*tries, loss],
    )
    assert exchange.loss == Loss(sent=100, lost=0)
    assert exchange.peers_seen == (own, natted)
    found = problems(Outcome(planned, "nc-1", 2, exchange, allowed_sources=(own,)))
    assert found == [
        "answered by something else: tcp x answered b'HTTP'",
        f"listener saw source ['{own}', '{natted}']",
    ]


def test_every_server_that_answered_any_probe_is_judged() -> None:
    hostport = dataclasses.replace(target(), servers=("hostport-node-2",), allowed_sources=None)
    answers = [
        {"ok": True, "server": "hostport-node-2"},
        {"ok": True, "count": 100, "sent": 100, "lost": 0, "servers": {"hostport-node-2": 99}},
    ]
    answers[1]["servers"]["someone-else"] = 1  # type: ignore[index]
    exchange = exchange_of(
        hostport,
        attempts=1,
        response=answers[0],
        records=[],
        packets=None,
        capture_error=None,
        answers=answers,
    )
    assert problems(Outcome(hostport, "nc-1", 1, exchange)) == [
        "answered by someone-else, not by hostport-node-2"
    ]
    assert evidence_of(answers)[1] == ("hostport-node-2", "someone-else")
