"""Two-pass reachability for the pair checks: one sweep per run, shared by the test items.

Every exchange the run's selected reachability checks need (a `Target`) is probed at once:

1. pass one, breadth-first: one try per target, every source container's targets in one agent
   ``call`` batch, the batches of all source containers concurrently (bounded thread pool);
2. pass two: only the failed targets are tried again, in rounds, until
   ``Timeouts.reach_attempts`` tries in all, with tenacity-bounded waits between rounds.

Captures run on the destinations across both passes (one nonce per target), and the listener
records and captures are read back once at the end. A target that passed only on a retry
passes, but carries how (`Outcome.flaky`). The sweep runs once per run, behind a lock file in
``RunInfo.shared_dir`` (`sweep_once`), so xdist workers share one result. Each test item reads
its own targets' `Outcome` and asserts on it; `failure_summary` groups a check's failed pairs
by node, so one bad node reads as one bad node.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from conformance.kit.agent_client import (
    AgentClient,
    AgentError,
    AgentResponse,
    Exchange,
    collect_queries,
    exchange_from_answers,
    probe_request,
    target_text,
)
from conformance.kit.pairs import natural_key
from conformance.kit.parallel import in_parallel as calls_in_parallel
from conformance.kit.probes import ProbeMap, RunInfo, run_lock
from conformance.kit.report import FLAKY_PROPERTY
from conformance.kit.settings import Timeouts

#: Concurrent agent calls of a sweep (one per source or destination container).
MAX_PARALLEL_CALLS = 16
#: Attribute a test function carries when its exchanges come from the sweep (`swept_by`).
PLANNER_ATTRIBUTE = "netconform_reachability_planner"
#: The agent bounds one capture at this many seconds.
MAX_CAPTURE_SECONDS = 300.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Endpoint:
    """One agent taking part in an exchange: the pod, its container, and the pod's node."""

    pod: str
    container: str
    node: str

    @property
    def label(self) -> str:
        return f"{self.pod}/{self.container}"


@dataclass(frozen=True)
class Target:
    """One exchange a check needs: ``proto`` from ``source`` to ``host`` (``port``) where
    ``destination``'s agent listens.

    ``allowed_sources``: when set, the destination must see traffic, and only from these
    addresses (listener and capture); when None, the sweep judges reachability only and the
    check judges the rest.
    """

    check: str
    proto: str
    family: int
    source: Endpoint
    destination: Endpoint
    host: str
    port: int | None
    capture: bool = True
    allowed_sources: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        """Unique in a run, and the same whichever process plans it."""
        return (
            f"{self.check}:{self.proto}:{self.source.label}->{self.destination.label}"
            f"@{target_text(self.proto, self.host, self.port)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "proto": self.proto,
            "family": self.family,
            "source": vars(self.source),
            "destination": vars(self.destination),
            "host": self.host,
            "port": self.port,
            "capture": self.capture,
            "allowed_sources": (
                list(self.allowed_sources) if self.allowed_sources is not None else None
            ),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Target:
        allowed = raw.get("allowed_sources")
        return cls(
            check=str(raw["check"]),
            proto=str(raw["proto"]),
            family=int(raw["family"]),
            source=Endpoint(**raw["source"]),
            destination=Endpoint(**raw["destination"]),
            host=str(raw["host"]),
            port=raw.get("port"),
            capture=bool(raw.get("capture", True)),
            allowed_sources=tuple(allowed) if allowed is not None else None,
        )


@dataclass(frozen=True)
class Outcome:
    """What the sweep saw for one target.

    ``error`` set: the agents could not be asked (could not test, no verdict). Otherwise
    ``exchange`` holds both ends' view; ``first_error`` is the first try's failure (None when
    the first try was answered).
    """

    target: Target
    nonce: str
    attempts: int = 0
    exchange: Exchange | None = None
    first_error: str | None = None
    error: str | None = None
    max_attempts: int = 1

    @property
    def reached(self) -> bool:
        return self.exchange is not None and self.exchange.reached

    @property
    def flaky(self) -> str | None:
        """How a target answered only on a retry, e.g. ``passed on attempt 2 of 3 (first:
        ETIMEDOUT ...)``; None when the first try was answered or none was."""
        if not self.reached or self.attempts <= 1:
            return None
        return (
            f"passed on attempt {self.attempts} of {self.max_attempts} (first: {self.first_error})"
        )

    def problems(self) -> list[str]:
        """What breaks the rule, as far as the sweep can judge (empty: nothing found)."""
        if self.error is not None or self.exchange is None:
            return []
        result = self.exchange
        if not result.reached:
            error = result.client_response.get("error")
            return [f"no answer after {result.attempts} attempt(s): {error}"]
        allowed = self.target.allowed_sources
        if allowed is None:
            return []
        problems = []
        listener = set(result.listener_peers)
        if self.target.proto != "icmp" and result.peer_seen:
            listener.add(result.peer_seen)
        if not listener or not listener <= set(allowed):
            problems.append(f"listener saw source {sorted(listener) or 'nothing'}")
        if result.capture_error is not None:
            problems.append(f"capture failed: {result.capture_error}")
        elif self.target.capture and (
            not result.captured_sources or not set(result.captured_sources) <= set(allowed)
        ):
            problems.append(
                f"capture in {self.target.destination.pod} saw source "
                f"{list(result.captured_sources) or 'nothing'}"
            )
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.as_dict(),
            "nonce": self.nonce,
            "attempts": self.attempts,
            "exchange": self.exchange.as_dict() if self.exchange is not None else None,
            "first_error": self.first_error,
            "error": self.error,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Outcome:
        return cls(
            target=Target.from_dict(raw["target"]),
            nonce=str(raw["nonce"]),
            attempts=int(raw["attempts"]),
            exchange=Exchange.from_dict(raw["exchange"]) if raw.get("exchange") else None,
            first_error=raw.get("first_error"),
            error=raw.get("error"),
            max_attempts=int(raw.get("max_attempts") or 1),
        )


def swept_by(planner: Callable[[Mapping[str, Any], ProbeMap], list[Target]]) -> Callable[[F], F]:
    """Mark a check whose exchanges come from the run's sweep: ``planner(params, probe_map)``
    gives the targets of one test item from its parameters (``item.callspec.params``)."""

    def mark(function: F) -> F:
        setattr(function, PLANNER_ATTRIBUTE, planner)
        return function

    return mark


def plan_for_items(items: Iterable[Any], probe_map: ProbeMap) -> list[Target]:
    """The targets of every collected test item whose function is `swept_by` a planner, in
    collection order, without duplicates. Items are read duck-typed (``function``,
    ``callspec.params``), so plain objects do in unit tests."""
    planned: dict[str, Target] = {}
    for item in items:
        planner = getattr(getattr(item, "function", None), PLANNER_ATTRIBUTE, None)
        callspec = getattr(item, "callspec", None)
        if planner is None or callspec is None:
            continue
        params = callspec.params
        if any(value is None for value in params.values()):
            continue  # placeholder case (cluster unavailable, not applicable)
        for target in planner(params, probe_map):
            planned.setdefault(target.key, target)
    return list(planned.values())


# --- the sweep -------------------------------------------------------------------------------


def _capture_budget(targets: Sequence[Target], timeouts: Timeouts) -> float:
    """Seconds a capture must live: every try of the busiest source, in sequence, plus the
    waits between rounds and the reading back; bounded by what the agent allows."""
    per_source = Counter(t.source.label for t in targets)
    busiest = max(per_source.values(), default=1)
    tries = timeouts.reach_attempts * busiest * (timeouts.probe + 1)
    return min(MAX_CAPTURE_SECONDS, tries + 2 * timeouts.exec_overhead + timeouts.capture_wait)


class _StillFailing(Exception):
    """A round of pass two left targets unanswered: try another (tenacity retries on it)."""


@dataclass
class _State:
    target: Target
    nonce: str
    capture_id: str | None = None
    attempts: int = 0
    response: AgentResponse = field(default_factory=dict)
    first_error: str | None = None
    error: str | None = None

    @property
    def pending(self) -> bool:
        return self.error is None and not self.response.get("ok")


def _by(
    states: Iterable[_State], key: Callable[[_State], Endpoint]
) -> dict[Endpoint, list[_State]]:
    groups: dict[Endpoint, list[_State]] = {}
    for state in states:
        groups.setdefault(key(state), []).append(state)
    return groups


def _error_text(response: AgentResponse) -> str:
    errno = response.get("errno")
    error = str(response.get("error") or "no answer")
    return f"{errno} {error}" if errno and str(errno) not in error else error


def run_sweep(
    agents: AgentClient,
    targets: Sequence[Target],
    *,
    max_parallel: int = MAX_PARALLEL_CALLS,
    new_nonce: Callable[[], str] | None = None,
) -> list[Outcome]:
    """Probe every target: pass one (one try each), pass two (retries of the failed ones, up to
    ``reach_attempts`` tries in all), then read back listener records and captures.

    Agent calls go out one batch per container, ``max_parallel`` at a time, each through its
    own API client. A container that cannot be asked (`AgentError`) makes its targets'
    outcomes carry ``error``; nothing else is retried or hidden.
    """
    timeouts = agents.timeouts
    make_nonce = new_nonce or (lambda: f"nc-{secrets.token_hex(8)}")
    states = [_State(target=t, nonce=make_nonce()) for t in targets]
    if not states:
        return []
    workers = max(1, min(max_parallel, len(states)))

    def in_parallel(
        groups: Mapping[Endpoint, list[_State]],
        work: Callable[[AgentClient, Endpoint, list[_State]], None],
    ) -> None:
        def could_not_ask(group: list[_State], exc: AgentError) -> None:
            for state in group:
                state.error = state.error or str(exc)

        calls_in_parallel(agents, groups, work, could_not_ask, max_parallel=workers)

    # Captures first, on every destination, for the whole sweep.
    budget = _capture_budget(targets, timeouts)

    def start_captures(own: AgentClient, endpoint: Endpoint, group: list[_State]) -> None:
        answers = own.call(
            endpoint.pod,
            endpoint.container,
            [{"op": "capture_start", "nonce": s.nonce, "timeout": budget} for s in group],
        )
        for state, answer in zip(group, answers, strict=True):
            if answer.get("ok"):
                state.capture_id = str(answer["capture_id"])
            else:
                state.error = (
                    f"start packet capture: agent answered error {answer.get('error')!r} "
                    f"[pod {endpoint.pod}, container {endpoint.container}]"
                )

    in_parallel(
        _by((s for s in states if s.target.capture), lambda s: s.target.destination),
        start_captures,
    )

    def probe(own: AgentClient, endpoint: Endpoint, group: list[_State]) -> None:
        answers = own.call(
            endpoint.pod,
            endpoint.container,
            [
                probe_request(s.target.proto, s.target.host, s.target.port, s.nonce, timeouts.probe)
                for s in group
            ],
        )
        for state, answer in zip(group, answers, strict=True):
            state.attempts += 1
            state.response = answer
            if state.attempts == 1 and not answer.get("ok"):
                state.first_error = _error_text(answer)

    def one_round() -> list[_State]:
        in_parallel(_by((s for s in states if s.pending), lambda s: s.target.source), probe)
        return [s for s in states if s.pending]

    # Pass one is the first round; pass two the later ones, for what still fails.
    if one_round() and timeouts.reach_attempts > 1:
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_StillFailing),
                stop=stop_after_attempt(timeouts.reach_attempts - 1),
                wait=wait_exponential(multiplier=0.5, max=2.0),
            ):
                with attempt:
                    if one_round():
                        raise _StillFailing
        except RetryError:
            pass  # bounded: what still fails after reach_attempts tries is a verdict

    def collect(own: AgentClient, endpoint: Endpoint, group: list[_State]) -> None:
        queries: list[dict[str, Any]] = []
        spans: list[tuple[_State, int, int]] = []
        for state in group:
            part = collect_queries(
                state.nonce,
                state.capture_id,
                reached=bool(state.response.get("ok")),
                capture_wait=timeouts.capture_wait,
            )
            spans.append((state, len(queries), len(part)))
            queries.extend(part)
        answers = own.call(endpoint.pod, endpoint.container, queries)
        for state, start, length in spans:
            state_answers = answers[start : start + length]
            try:
                exchange = exchange_from_answers(
                    proto=state.target.proto,
                    source=(state.target.source.pod, state.target.source.container),
                    destination=(endpoint.pod, endpoint.container),
                    host=state.target.host,
                    port=state.target.port,
                    attempts=state.attempts,
                    response=state.response,
                    answers=state_answers,
                    captured=state.capture_id is not None,
                )
            except AgentError as exc:
                state.error = str(exc)
                continue
            exchanges[state.nonce] = exchange

    exchanges: dict[str, Exchange] = {}
    in_parallel(
        _by((s for s in states if s.error is None), lambda s: s.target.destination), collect
    )
    outcomes = []
    for state in states:
        outcomes.append(
            Outcome(
                target=state.target,
                nonce=state.nonce,
                attempts=state.attempts,
                exchange=exchanges.get(state.nonce) if state.error is None else None,
                first_error=state.first_error,
                error=state.error,
                max_attempts=timeouts.reach_attempts,
            )
        )
    return outcomes


# --- the sweep's results, shared by a run's processes ----------------------------------------


class SweepError(AgentError):
    """The sweep as a whole could not run: every check needing it could not test."""

    def __init__(self, message: str) -> None:
        super().__init__(message, pod="-", container="-")


@dataclass(frozen=True)
class Sweep:
    """The outcomes of one run's sweep, by target key."""

    outcomes: Mapping[str, Outcome]

    def outcome(self, target: Target) -> Outcome | None:
        return self.outcomes.get(target.key)

    def failed(self, check: str) -> list[Outcome]:
        """The outcomes of ``check`` whose `Outcome.problems` are not empty."""
        return [o for o in self.outcomes.values() if o.target.check == check and o.problems()]


def record_flaky(
    user_properties: list[tuple[str, object]],
    outcomes: Iterable[Outcome],
    label: Callable[[Outcome], str] | None = None,
) -> None:
    """Add the ``netconform.flaky`` property for the outcomes that passed only on a retry:
    each outcome's `Outcome.flaky`, after ``label(outcome) + ": "`` when given, joined by
    "; ". Nothing when none was flaky."""
    parts = [f"{label(o)}: {o.flaky}" if label else str(o.flaky) for o in outcomes if o.flaky]
    if parts:
        user_properties.append((FLAKY_PROPERTY, "; ".join(parts)))


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
        if src == dst:
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


def _sweep_paths(run: RunInfo) -> tuple[Path, Path]:
    shared = Path(run.shared_dir)
    return shared / "reachability.json", shared / "reachability.lock"


def sweep_once(run: RunInfo, compute: Callable[[], list[Outcome]]) -> Sweep:
    """Compute the sweep on the first call in the whole run (any process, behind the same kind
    of lock file as `conformance.kit.probes.deploy_once`); later calls read it back.

    A sweep that failed is not repeated: every later caller gets the same `SweepError`.
    """
    state_path, lock_path = _sweep_paths(run)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(lock_path):
        if state_path.exists():
            raw = json.loads(state_path.read_text())
            if raw.get("error"):
                raise SweepError(str(raw["error"]))
            return Sweep({o.target.key: o for o in map(Outcome.from_dict, raw["outcomes"])})
        try:
            outcomes = compute()
        except BaseException as exc:
            _write(state_path, {"error": f"the reachability sweep failed: {exc!r}"})
            raise
        _write(state_path, {"outcomes": [o.as_dict() for o in outcomes]})
        return Sweep({o.target.key: o for o in outcomes})


def _write(path: Path, raw: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, sort_keys=True))
    tmp.replace(path)


def outcomes_for(sweep: Sweep, targets: Sequence[Target], agents: AgentClient) -> list[Outcome]:
    """The outcomes of ``targets``: from the sweep, or (for a target the sweep did not plan,
    which a correct plan never leaves) from a sweep of just the missing ones. `AgentError`
    when the agents could not be asked about one of them."""
    found: dict[str, Outcome] = {}
    missing: list[Target] = []
    for target in targets:
        outcome = sweep.outcome(target)
        if outcome is None:
            missing.append(target)
        else:
            found[target.key] = outcome
    for outcome in run_sweep(agents, missing):
        found[outcome.target.key] = outcome
    results = [found[t.key] for t in targets]
    for outcome in results:
        if outcome.error is not None:
            raise AgentError(
                f"{outcome.target.proto} {outcome.target.source.label} -> "
                f"{outcome.target.destination.label}: {outcome.error}",
                pod=outcome.target.source.pod,
                container=outcome.target.source.container,
            )
    return results
