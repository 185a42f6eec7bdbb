"""Verdicts on the sweep's exchanges, judged in one place for every reachability check.

The checks declare what they need (`conformance.kit.exchanges.reachability`: targets with the sources a
destination may see); the sweep moves the traffic; here an `Outcome` becomes a list of
problems (`problems`), and a test item's outcomes become a pass, a failure naming each broken
exchange with expected versus observed, a skip, or "could not test" (`ItemExchanges`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest

from conformance.kit.base.errors import CouldNotTest, ProbeCallError
from conformance.kit.base.settings import DEFAULT_MAX_LOSS
from conformance.kit.cluster.pairs import natural_key
from conformance.kit.exchanges.reachability import (
    KIND_REFUSAL,
    KIND_SPREAD,
    Exchange,
    Outcome,
    Sweep,
    Unplanned,
)
from conformance.kit.probes.client import ProbeResponse, canonical_ip
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
    fail_rule,
)

if TYPE_CHECKING:
    from conformance.kit.exchanges.flip_outcome import ReadinessFlip

UserProperties = list[tuple[str, object]]
#: How a connection is refused promptly: a TCP reset, or an ICMP unreachable (port, host or
#: network) as kube-proxy's REJECT rules and kube-proxy replacements send.
REFUSALS = frozenset({"ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN"})
#: "At once": a refusal later than this is not one. kube-proxy's REJECT and a reset come back
#: within milliseconds, while a neighbour that never answers ARP (a cluster IP routed to a
#: dead end) gives EHOSTUNREACH only after 3 s (3 solicitations 1 s apart); 2 s, as the
#: upstream e2e's ``nc -w 2``, leaves a loaded node a second and more of scheduling delay.
REFUSAL_SECONDS = 2.0
#: The share of an exchange's probes that may be lost when the caller does not say.
DEFAULT_MAX_LOSS_RATIO = DEFAULT_MAX_LOSS / 100


def names_text(names: Sequence[str]) -> str:
    """``peer-node-1``, ``peer-node-1 and peer-node-2``, ``a, b and c``."""
    listed = list(names)
    if len(listed) <= 1:
        return "".join(listed) or "nobody"
    return ", ".join(listed[:-1]) + f" and {listed[-1]}"


def spread_text(response: ProbeResponse) -> str:
    """What a spread saw: ``answered: peer-node-1 7, peer-node-2 5; failed: ETIMEDOUT 3
    (first: ...)``."""
    servers = response.get("servers") or {}
    errors = response.get("errors") or {}
    parts = ["answered: " + (", ".join(f"{s} {n}" for s, n in sorted(servers.items())) or "nobody")]
    if errors:
        examples = response.get("error_examples") or []
        first = f" (first: {examples[0]})" if examples else ""
        parts.append("failed: " + ", ".join(f"{e} {n}" for e, n in sorted(errors.items())) + first)
    return "; ".join(parts)


def failed_connections(response: ProbeResponse) -> int:
    """Connections of a spread that were not answered (refused, reset, timed out...)."""
    return sum(int(n) for n in (response.get("errors") or {}).values())


def spread_problems(outcome: Outcome, result: Exchange, explained: str | None = None) -> list[str]:
    """A spread through a Service: every connection answered (unless ``explained``: something
    the suite did, which the text names, explains failures), only by the Service's endpoints,
    every wanted server at least once and one of ``one_of_servers``, no unwanted one, and (with
    allowed sources) every server saw only allowed sources."""
    response = result.client_response
    target = outcome.target
    if not response.get("ok"):
        return [f"the spread could not run: {response.get('error')}"]
    counts = {str(k): int(v) for k, v in (response.get("servers") or {}).items()}
    tries = response.get("tries")
    found = []
    failed = failed_connections(response)
    if failed and explained is None:
        found.append(
            f"{failed} of {tries} connections failed, each a broken connection through "
            f"{target.destination.pod} ({spread_text(response)})"
        )
    if target.endpoints is not None:
        others = sorted(s for s in counts if s not in target.endpoints)
        if others:
            answered = sum(counts[s] for s in others)
            found.append(
                f"{names_text(others)}, not an endpoint of {target.destination.pod}, answered "
                f"{answered} of {tries} connections ({spread_text(response)})"
            )
    missing = [s for s in target.servers or () if not counts.get(s)]
    if missing:
        found.append(
            f"{names_text(missing)} never answered in {tries} connections ({spread_text(response)})"
        )
    if target.one_of_servers and not any(counts.get(s) for s in target.one_of_servers):
        found.append(
            f"none of {names_text(list(target.one_of_servers))} answered in {tries} connections "
            f"({spread_text(response)})"
        )
    stale = [s for s in target.unwanted_servers if counts.get(s)]
    if stale:
        reached = sum(counts[s] for s in stale)
        found.append(
            f"{names_text(stale)} (not ready) answered {reached} of {tries} connections "
            f"({spread_text(response)})"
        )
    allowed = outcome.allowed_sources
    if allowed is not None:
        for server, seen in sorted((response.get("peers") or {}).items()):
            other = sorted({canonical_ip(a) or str(a) for a in seen} - set(allowed))
            if other:
                found.append(f"{server} saw source {other}")
    return found


def refusal_problems(result: Exchange) -> list[str]:
    """A connection to a Service without endpoints: refused at once (`REFUSALS`, within
    `REFUSAL_SECONDS`), never answered, never left to time out. A refusal after seconds (an
    EHOSTUNREACH once ARP gave up) breaks the rule: the client waited, as on a dead end."""
    response = result.client_response
    if response.get("ok"):
        return [
            f"{result.server or 'something'} answered, although the Service has no ready endpoint"
        ]
    errno = response.get("errno")
    seconds = response.get("seconds")
    if errno in REFUSALS:
        if not isinstance(seconds, (int, float)):
            return [f"refused ({errno}), but the agent did not say how long it took"]
        if seconds > REFUSAL_SECONDS:
            return [
                f"not refused at once: {errno} after {seconds:.1f}s (at once is within "
                f"{REFUSAL_SECONDS:.0f}s; a refusal this late is a dead end, e.g. ARP giving up): "
                f"{response.get('error')}"
            ]
        return []
    if errno == "ETIMEDOUT":
        return [f"not refused: the connection timed out ({response.get('error')})"]
    return [f"not refused but {errno or 'failed'}: {response.get('error')}"]


def loss_problems(result: Exchange, max_loss: float) -> list[str]:
    """More of the exchange's probes lost than ``max_loss`` (a share, 0..1) allows, while the
    destination's listener dropped none itself (see `loss_doubt`)."""
    loss = result.loss
    if loss is None or loss.ratio <= max_loss or loss_doubt(result, max_loss):
        return []
    return [f"lost more than the {100 * max_loss:g} % --max-loss allows: {loss.describe()}"]


def loss_doubt(result: Exchange, max_loss: float) -> str | None:
    """Why a loss above ``max_loss`` is no verdict: an end dropped probes itself while it was
    measured, every measurement (the destination's listener or the measuring socket had a
    full buffer, or the accept queue was full: a starved endpoint, not the network), so whose
    the loss was is unknown."""
    loss = result.loss
    if loss is None or loss.ratio <= max_loss or not loss.endpoint_drops:
        return None
    return (
        f"{loss.describe()}, above the {100 * max_loss:g} % --max-loss, but the ends themselves "
        f"dropped {loss.endpoint_drops} datagrams or connections (a full socket buffer or "
        f"accept queue) in each of {loss.measurements} measurements: the network's share is "
        "unknown"
    )


def problems(
    outcome: Outcome, max_loss: float = DEFAULT_MAX_LOSS_RATIO, *, explained: str | None = None
) -> list[str]:
    """What breaks the rule in one exchange (empty: nothing found). An outcome whose agents
    could not be asked has no problems: it has no verdict (see `ItemExchanges`).

    ``max_loss``: the share of a measured exchange's probes that may be lost. ``explained``:
    what the suite did that explains a spread's failed connections (they are then no
    problem)."""
    result = outcome.exchange
    if outcome.error is not None or result is None:
        return []
    if outcome.target.kind == KIND_SPREAD:
        return spread_problems(outcome, result, explained)
    if outcome.target.kind == KIND_REFUSAL:
        return refusal_problems(result)
    # Something other than the destination's agent answered, in any try or look.
    wrong = [f"answered by something else: {text}" for text in result.wrong_answers]
    if not result.reached:
        error = result.client_response.get("error")
        if outcome.target.full_size:
            return [
                *wrong,
                f"not delivered intact after {result.attempts} attempt(s): {error}{sizes(outcome)}",
            ]
        return [*wrong, f"no answer after {result.attempts} attempt(s): {error}"]
    found = [*wrong, *loss_problems(result, max_loss)]
    servers = outcome.target.servers
    if servers is not None:
        answered = sorted({*result.servers_seen, *([result.server] if result.server else [])})
        others = [s for s in answered if s not in servers] or (
            [] if result.server in servers else ["something that did not say who it is"]
        )
        if others:
            expected = names_text(servers) if len(servers) < 4 else "one of " + str(list(servers))
            found.append(f"answered by {names_text(others)}, not by {expected}")
    allowed = outcome.allowed_sources
    if allowed is None:
        if outcome.target.full_size and not result.listener_peers:
            found.append(
                f"{outcome.target.destination.pod} recorded nothing although the sender saw an answer"
            )
        return found
    listener = set(result.listener_peers)
    if outcome.target.proto != "icmp":
        listener.update(p for p in (result.peer_seen, *result.peers_seen) if p)
    if not listener:
        # Something answered at the address, but not the destination's agent: another pod
        # holds its IP, or a proxy answered.
        found.append(
            f"{outcome.target.destination.pod} recorded nothing although something answered "
            "at its address"
        )
    elif not listener <= set(allowed):
        found.append(f"listener saw source {sorted(listener)}")
    if result.capture_error is not None:
        found.append(f"capture failed: {result.capture_error}")
    elif outcome.target.capture and (
        not result.captured_sources or not set(result.captured_sources) <= set(allowed)
    ):
        found.append(
            f"capture in {outcome.target.destination.pod} saw source "
            f"{list(result.captured_sources) or 'nothing'}"
        )
    return found


def sizes(outcome: Outcome) -> str:
    """The sizes a full-size exchange tried and the MTUs each side reported, as the agent said
    them (``; sent 1500 bytes, MTU here 1500 (eth0), at the destination 1400``)."""
    response = outcome.exchange.client_response if outcome.exchange is not None else {}
    parts = []
    for key, label in (
        ("size", "packet size"),
        ("bytes_sent", "bytes sent"),
        ("bytes_received", "bytes received"),
        ("mtu", "MTU here"),
        ("peer_mtu", "MTU at the destination"),
        ("mss", "TCP MSS"),
    ):
        if response.get(key) is not None:
            parts.append(f"{label} {response[key]}")
    if response.get("iface"):
        parts.append(f"interface {response['iface']}")
    return f" ({', '.join(parts)})" if parts else ""


def flaky_text(outcome: Outcome) -> str | None:
    """How an exchange answered only on a retry, e.g. ``passed on attempt 2 of 3 (first:
    ETIMEDOUT ...)``; None when the first try was answered or none was."""
    if not outcome.reached or outcome.attempts <= 1:
        return None
    return (
        f"passed on attempt {outcome.attempts} of {outcome.max_attempts} "
        f"(first: {outcome.first_error})"
    )


def judge_unplanned(rule: str, unplanned: Unplanned) -> NoReturn:
    """An item the planner left without traffic: fails ``rule`` when the cluster broke it before
    any traffic (``broken``), else skips (not applicable here), with the planner's reason."""
    if unplanned.broken:
        fail_rule(rule, expected="traffic", observed=unplanned.reason)
    pytest.skip(unplanned.reason)


def failure_summary(failed: Sequence[Outcome], check: str) -> str:
    """One line grouping a check's failed targets by node, e.g. ``node-2 is in all 6 failed
    pairs of test_no_snat in this run (as source 3, as destination 3); other nodes: node-1 in
    3 (as source 3), node-3 in 3 (as destination 3)``."""
    total = len(failed)
    if total == 0:
        return f"no failed pairs of {check} in this run"
    roles: dict[str, Counter[str]] = {}
    for outcome in failed:
        src, dst = outcome.target.source.node, outcome.target.destination.node
        if not dst:  # a Service, or a host outside the cluster: only the source is a node
            roles.setdefault(src, Counter())["source"] += 1
        elif not src:  # from outside the cluster: only the destination is a node
            roles.setdefault(dst, Counter())["destination"] += 1
        elif src == dst:
            roles.setdefault(src, Counter())["same-node"] += 1
        else:
            roles.setdefault(src, Counter())["source"] += 1
            roles.setdefault(dst, Counter())["destination"] += 1

    def count(node: str) -> int:
        return sum(roles[node].values())

    def how(node: str) -> str:
        parts = [
            f"as {role} {roles[node][role]}"
            for role in ("source", "destination", "same-node")
            if roles[node][role]
        ]
        return ", ".join(parts)

    nodes = sorted(roles, key=natural_key)
    everywhere = [n for n in nodes if count(n) == total]
    others = [n for n in nodes if n not in everywhere]
    noun = "failed pair" if total == 1 else "failed pairs"
    if everywhere:
        if len(everywhere) == 1:
            who, where = f"{everywhere[0]} is", how(everywhere[0])
        else:
            who = " and ".join([", ".join(everywhere[:-1]), everywhere[-1]]) + " are"
            where = "; ".join(f"{n} {how(n)}" for n in everywhere)
        quantity = "the 1" if total == 1 else f"all {total}"
        rest = ", ".join(f"{n} in {count(n)} ({how(n)})" for n in others) or "none"
        return f"{who} in {quantity} {noun} of {check} in this run ({where}); other nodes: {rest}"
    listed = ", ".join(f"{n} in {count(n)} ({how(n)})" for n in nodes)
    return f"{total} {noun} of {check} in this run, no node in all of them: {listed}"


@dataclass
class ItemExchanges:
    """One test item's exchanges from the run's sweep, and the one way they are judged.

    A check's body is ``exchanges.assert_rule(RULE)``: it passes when every exchange holds,
    fails naming each broken exchange (expected versus observed, and the run's failed pairs of
    the check grouped by node), skips or fails for an item the planner left without traffic
    (`Unplanned`), and raises `ProbeCallError` (could not test) when an agent could not be
    asked, `CouldNotTest` when the item has no exchange at all. Tries and losses, the loss
    measured and a pass on retry are recorded on the item. ``max_loss``: the share of an
    exchange's probes that may be lost (``--max-loss``; 0 under ``--strict-reachability``).
    """

    outcomes: list[Outcome]
    unplanned: Unplanned | None
    sweep: Sweep
    user_properties: UserProperties
    strict: bool = False
    max_loss: float = DEFAULT_MAX_LOSS_RATIO

    def _check(self) -> str:
        return self.outcomes[0].target.check if self.outcomes else ""

    def assert_rule(self, rule: str, *, expected: str | None = None) -> None:
        """Pass, fail, skip or could-not-test, as the class says."""
        if self.unplanned is not None:
            judge_unplanned(rule, self.unplanned)
        if not self.outcomes:
            # Nothing was sent, so nothing held: never a pass.
            raise CouldNotTest(f"{rule}: this item was planned no exchange, so nothing was checked")
        for outcome in self.outcomes:
            if outcome.error is not None:
                raise ProbeCallError(f"{outcome.target.describe()}: {outcome.error}")
        self._record_tries()
        broken = [(o, found) for o in self.outcomes if (found := problems(o, self.max_loss))]
        doubts = [
            f"{o.target.describe()}: {doubt}"
            for o in self.outcomes
            if o.exchange is not None and (doubt := loss_doubt(o.exchange, self.max_loss))
        ]
        if doubts and not broken:
            raise CouldNotTest("; ".join(doubts))
        flaky = [(o, text) for o in self.outcomes if (text := flaky_text(o))]
        if self.strict:
            broken += [
                (o, [f"{text} (--strict: a pass on retry counts as broken)"]) for o, text in flaky
            ]
        if broken:
            raise RuleBroken(self._failure(rule, broken, expected))
        if flaky:
            self.user_properties.append(
                (
                    FLAKY_PROPERTY,
                    "; ".join(
                        text if len(self.outcomes) == 1 else f"{o.target.destination.pod}: {text}"
                        for o, text in flaky
                    ),
                )
            )

    def _record_tries(self) -> None:
        tries = sum(o.attempts for o in self.outcomes)
        lost = sum(o.attempts - (1 if o.reached else 0) for o in self.outcomes)
        self.user_properties.append((ATTEMPTS_PROPERTY, str(tries)))
        self.user_properties.append((LOSSES_PROPERTY, str(lost)))
        measured = [
            (o, o.exchange.loss)
            for o in self.outcomes
            if o.exchange is not None and o.exchange.loss is not None
        ]
        if not measured:
            return
        self.user_properties.append((PROBES_PROPERTY, str(sum(m.sent for _, m in measured))))
        self.user_properties.append((PROBES_LOST_PROPERTY, str(sum(m.lost for _, m in measured))))
        # The worst exchange's share: the one the verdict rests on.
        worst = max(m.ratio for _, m in measured)
        self.user_properties.append((LOSS_RATIO_PROPERTY, f"{worst:.4f}"))
        self.user_properties.append(
            (
                LOSS_PROPERTY,
                "; ".join(
                    m.describe()
                    if len(measured) == 1
                    else f"{o.target.source.label} -> {o.target.destination.label}: {m.describe()}"
                    for o, m in measured
                ),
            )
        )

    def _failure(
        self, rule: str, broken: list[tuple[Outcome, list[str]]], expected: str | None
    ) -> RuleFailure:
        targets = [o.target for o in self.outcomes]
        protocols = sorted({f"{t.proto} over IPv{t.family}" for t in targets})
        pods = list(
            dict.fromkeys(
                p
                for t in targets
                for p in (t.source.pod, t.destination.pod if t.destination.container else "")
                if p
            )
        )
        nodes = list(
            dict.fromkeys(n for t in targets for n in (t.source.node, t.destination.node) if n)
        )
        allowed = sorted({a for o in self.outcomes for a in (o.allowed_sources or ())})
        if expected is None:
            expected = "every exchange answered" + (
                f", the destination seeing only {allowed} as the source (listener and capture)"
                if allowed
                else ""
            )
        if any(o.target.measures_loss for o in self.outcomes):
            expected += (
                f"; at most {100 * self.max_loss:g} % of each exchange's probes lost (--max-loss)"
            )
        check = self._check()
        failed_in_run = [o for o in self.sweep.of_check(check) if problems(o, self.max_loss)]
        return RuleFailure(
            rule=rule,
            expected=expected,
            observed=f"{len(broken)} of {len(self.outcomes)} exchanges broken: "
            + "; ".join(f"{o.target.describe()}: {', '.join(found)}" for o, found in broken),
            protocol=", ".join(protocols),
            pods=tuple(pods),
            nodes=tuple(nodes),
            details=(
                *(o.describe() for o, _ in broken),
                "across the run: " + failure_summary(failed_in_run, check),
            ),
        )


#: What explains a connection failing while the readiness check turns a backend unready and
#: ready again: the suite's own flip (a connection caught by the data plane's change).
READINESS_FLIP = "the readiness flip"


def flip_problems(outcome: Outcome) -> list[str]:
    """`problems` of a spread made during the readiness flip, whose failed connections the
    flip explains."""
    return problems(outcome, explained=READINESS_FLIP)


def flip_answered(outcome: Outcome) -> bool:
    """Whether a spread made during the readiness flip shows nothing wrong but what the flip
    explains (the readiness flip's test for "answering again")."""
    return not flip_problems(outcome)


def readiness_problems(flip: ReadinessFlip, node: str, family: int) -> list[str]:
    """What breaks "endpoints follow readiness" as ``node``'s probe pod saw it over IPv
    ``family``: the EndpointSlice not following the backend's readiness, new connections still
    reaching it `ReadinessFlip.bound` seconds after it turned unready (or the other endpoints
    not answering meanwhile), or it not answering again that long after it turned ready."""
    followed = flip.of(node, family)
    assert followed is not None
    found = []
    if flip.slice_unready_after is None:
        found.append(
            f"the EndpointSlices still listed {flip.backend} as ready after it turned unready"
        )
    if followed.stopped_after is None:
        seen = flip_problems(followed.unready) if followed.unready is not None else []
        found.append(
            f"new connections still reached the unready {flip.backend} in a round started "
            f"{flip.bound:.0f}s or more after its EndpointSlice changed "
            f"({followed.rounds_unready} rounds): " + "; ".join(seen)
        )
    elif followed.unready is not None and flip_problems(followed.unready):
        found.append("while it was unready: " + "; ".join(flip_problems(followed.unready)))
    if flip.slice_ready_after is None:
        found.append(f"the EndpointSlices did not list {flip.backend} as ready again")
    if followed.back_after is None:
        seen = flip_problems(followed.ready) if followed.ready is not None else []
        found.append(
            f"{flip.backend} did not answer again, not even in a round started "
            f"{flip.bound:.0f}s or more after it turned ready ({followed.rounds_ready} rounds): "
            + "; ".join(seen)
        )
    return found


def assert_readiness_followed(
    rule: str, flip: ReadinessFlip, node: str, family: int, user_properties: UserProperties
) -> None:
    """Pass, fail (naming what did not follow, with the timings), skip (no traffic planned for
    this node and family) or could-not-test (an agent could not be asked)."""
    if flip.error is not None:
        raise ProbeCallError(flip.error)
    followed = flip.of(node, family)
    if followed is None:
        raise ProbeCallError(f"the readiness flip planned nothing for {node} over IPv{family}")
    if followed.unplanned is not None:
        judge_unplanned(rule, followed.unplanned)
    if followed.error is not None:
        raise ProbeCallError(f"{node}: {followed.error}")
    spreads = [o for o in (followed.unready, followed.ready) if o is not None]
    failed = sum(
        failed_connections(o.exchange.client_response) for o in spreads if o.exchange is not None
    )
    user_properties.append(
        (
            "netconform.readiness",
            f"{flip.backend}: EndpointSlice not ready after {flip.slice_unready_after}s, "
            f"no new connection from {node} after {followed.stopped_after}s more; ready again "
            f"after {flip.slice_ready_after}s, answering after {followed.back_after}s more"
            + (
                f"; {failed} connections of the deciding spreads failed, which "
                f"{READINESS_FLIP} may explain"
                if failed
                else ""
            ),
        )
    )
    found = readiness_problems(flip, node, family)
    if found:
        outcomes = [o for o in (followed.unready, followed.ready) if o is not None]
        fail_rule(
            rule,
            expected=f"no new connection reaches {flip.backend} within {flip.bound:.0f}s of "
            "its EndpointSlice saying it is not ready, and it answers again within "
            f"{flip.bound:.0f}s of turning ready",
            observed="; ".join(found),
            protocol=f"tcp over IPv{family}",
            pods=[o.target.source.pod for o in outcomes[:1]] + [flip.backend],
            nodes=list(dict.fromkeys([node, flip.node])),
            details=[o.describe() for o in outcomes],
        )
