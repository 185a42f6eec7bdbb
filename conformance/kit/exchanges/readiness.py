"""The readiness check's disruption, once per run: one backend of the Service (the first node's
peer probe) turns unready, and every node's probe pod connects through the Service's cluster
IP until no new connection reaches it (bounded in time); then it turns ready again and every
node connects until it answers again. Spreads of connections, judged as every Service check
is (`conformance.kit.verdicts.judge`), from all nodes at once, so the cost does not grow with the
nodes: a round is one agent call per node.

Rounds go on until every node's spread decided or a round that started ``bound`` seconds or
more after the EndpointSlice changed has run: that round decides. A round lasts as long as its
spread (hundreds of connections on a Service of many endpoints), so a round that started
before the data plane caught up must not be the last word, nor one that started in time.

It runs after the run's sweep and prefetch (the fixture asks for both first): no other check
sees the backend unready.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from time import monotonic
from typing import Any

from kubernetes import client
from tenacity import Retrying, retry_if_result, wait_fixed

from conformance.kit.base.errors import ProbeCallError, ProbeDeploymentError
from conformance.kit.base.runstate import RunInfo, once_data
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.waiting import wait_on_list
from conformance.kit.exchanges.flip_outcome import Followed, ReadinessFlip
from conformance.kit.exchanges.reachability import (
    KIND_SPREAD,
    Endpoint,
    Outcome,
    Target,
    Unplanned,
    run_sweep,
    without_address,
)
from conformance.kit.exchanges.service_targets import backends, facts_of, no_cluster_ip
from conformance.kit.probes.client import ProbeClient, address_of_family, require_ok
from conformance.kit.probes.lives import blame_removal, changed_pods, pod_lives, why_lost
from conformance.kit.probes.model import ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.probes.services import SERVICE, service_port_of, spread_tries

READINESS_RECORD = "readiness"
#: The label EndpointSlices carry with their Service's name.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Seconds between two rounds of spreads.
ROUND_PAUSE = 0.5


def endpoint_ready(slices: Mapping[str, Any], pod: str) -> bool | None:
    """Whether the Service's EndpointSlices list ``pod`` as ready (None: not listed at all). A
    condition left unset counts as ready, as the API documents for consumers."""
    listed = [
        endpoint
        for item in slices.values()
        for endpoint in item.endpoints or []
        if endpoint.target_ref is not None and endpoint.target_ref.name == pod
    ]
    if not listed:
        return None
    return any(e.conditions is None or e.conditions.ready is not False for e in listed)


def _spread(
    check: str,
    source: Probe,
    family: int,
    vip: str,
    servers: Sequence[str],
    unwanted: Sequence[str],
    tries: int,
) -> Target:
    container = source.container()
    return Target(
        check=check,
        proto="tcp",
        family=family,
        source=Endpoint(source.name, container.name, source.node),
        destination=Endpoint(SERVICE, "", ""),
        host=vip,
        port=service_port_of("tcp"),
        capture=False,
        kind=KIND_SPREAD,
        servers=tuple(servers),
        unwanted_servers=tuple(unwanted),
        max_tries=tries,
    )


def _rounds(
    probe_client: ProbeClient,
    targets: Mapping[tuple[str, int], Target],
    done: Callable[[Outcome], bool],
    bound: float,
    started: float,
) -> dict[tuple[str, int], tuple[Outcome | None, float | None, int]]:
    """Rounds of every pending target's spread (one agent call per source, all at once) until
    each is ``done`` or a round that started ``bound`` seconds or more after ``started`` has
    run: per target, the deciding (or last) outcome, the seconds since ``started`` when it was
    done (None: never), and the rounds it took."""
    found: dict[tuple[str, int], tuple[Outcome | None, float | None, int]] = {
        key: (None, None, 0) for key in targets
    }
    pending = dict(targets)
    round_started = [started]

    def one_round() -> bool:
        round_started[0] = monotonic()
        by_key = {t.key: k for k, t in pending.items()}
        for outcome in run_sweep(probe_client, list(pending.values())):
            key = by_key[outcome.target.key]
            rounds = found[key][2] + 1
            if outcome.error is not None:
                found[key] = (outcome, None, rounds)
                del pending[key]  # could not test: no verdict, no more rounds
            elif done(outcome):
                found[key] = (outcome, round(monotonic() - started, 2), rounds)
                del pending[key]
            else:
                found[key] = (outcome, None, rounds)
        return bool(pending)

    if pending:
        Retrying(
            stop=lambda _state: round_started[0] - started >= bound,
            wait=wait_fixed(ROUND_PAUSE),
            retry=retry_if_result(bool),
            retry_error_callback=lambda _state: True,
        )(one_round)
    return found


def flip_readiness(
    probe_map: ProbeMap,
    probe_client: ProbeClient,
    discovery: client.DiscoveryV1Api,
    families: Sequence[int],
    answered: Callable[[Outcome], bool],
    check: str,
) -> ReadinessFlip:
    """Turn the readiness target unready, follow it from every node, turn it ready again,
    follow it again (see the module's docstring). The backend is made ready again whatever
    happens. ``answered``: whether a spread made once the backend is ready again saw it
    answer (the judge's `conformance.kit.verdicts.judge.flip_answered`); ``check``: the name of
    the check the spreads are for."""
    timeouts: Timeouts = probe_client.timeouts
    namespace = probe_map.namespace
    facts = facts_of(probe_map)
    target = next((p for p in probe_map.of_role(ROLE_PEER) if p.readiness_target), None)
    if target is None:
        raise ProbeDeploymentError("the run has no backend whose readiness may be turned off")
    agent = target.container().name
    bound = timeouts.endpoint_follow
    unready_targets: dict[tuple[str, int], Target] = {}
    ready_targets: dict[tuple[str, int], Target] = {}
    unplanned: dict[tuple[str, int], Unplanned] = {}
    for source in probe_map.of_role(ROLE_PROBE):
        for family in families:
            key = (source.node, family)
            vip = facts.cluster_ip(SERVICE, family)
            everyone = backends(probe_map, family)
            if vip is None:
                unplanned[key] = no_cluster_ip(SERVICE, family)
            elif address_of_family(source.pod_ips, family) is None:
                # A broken rule when --ip-family requires the family, else a skip.
                unplanned[key] = without_address(family, [source], probe_map)
            elif target.name not in everyone:
                unplanned[key] = without_address(family, [target], probe_map)
            else:
                others = [b for b in everyone if b != target.name]
                tries = spread_tries(len(everyone), len(everyone))
                unready_targets[key] = _spread(
                    check, source, family, vip, others, [target.name], tries
                )
                ready_targets[key] = _spread(
                    check, source, family, vip, [target.name], [], spread_tries(len(everyone), 1)
                )

    def set_ready(ready: bool) -> None:
        try:
            require_ok(
                probe_client.call_one(target.name, agent, {"op": "set_ready", "ready": ready}),
                pod=target.name,
                container=agent,
                what=f"set_ready {ready}",
            )
        except ProbeCallError as exc:
            blamed = blame_removal(
                target.name, str(exc), pod_lives(probe_client.core, namespace, timeouts)
            )
            if blamed is None:
                raise
            raise ProbeCallError(blamed) from exc

    def slice_says(ready: bool) -> float | None:
        started = monotonic()
        found = wait_on_list(
            f"EndpointSlices of Service {SERVICE} in {namespace}",
            discovery.list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={SERVICE}",
            done=lambda slices: bool(endpoint_ready(slices, target.name)) == ready,
            timeout=timeouts.endpoint_update,
            timeouts=timeouts,
        )
        return round(monotonic() - started, 2) if found is not None else None

    lives_before = pod_lives(probe_client.core, namespace, timeouts)
    try:
        set_ready(False)
        slice_unready = slice_says(False)
        # Measured from the slice's change, or from its deadline when it never changed.
        unready = _rounds(
            probe_client, unready_targets, lambda o: not _stale(o), bound, monotonic()
        )
    finally:
        set_ready(True)  # whatever happened: the backend serves again
    slice_ready = slice_says(True)
    ready = _rounds(probe_client, ready_targets, answered, bound, monotonic())
    # A client or backend taken away or restarted under the check: what the spreads saw is
    # no evidence about the data plane (a deleted backend answers nothing).
    lives_after = pod_lives(probe_client.core, namespace, timeouts) if lives_before else None
    changed = changed_pods(lives_before, lives_after) if lives_before and lives_after else {}
    followed = []
    for source in probe_map.of_role(ROLE_PROBE):
        for family in families:
            key = (source.node, family)
            if key in unplanned:
                followed.append(Followed(source.node, family, unplanned=unplanned[key]))
                continue
            off, stopped, off_rounds = unready[key]
            on, back, on_rounds = ready[key]
            errors = [o.error for o in (off, on) if o is not None and o.error is not None]
            spreads = (unready_targets[key], ready_targets[key])
            if lives_before and lives_after:
                pods = sorted({p for t in spreads for p in t.pods})
                lost = why_lost(pods, lives_before, changed)
                if lost is not None:
                    errors.append(f"{lost} (during the readiness check)")
            followed.append(
                Followed(
                    node=source.node,
                    family=family,
                    stopped_after=stopped,
                    back_after=back,
                    unready=off,
                    ready=on,
                    rounds_unready=off_rounds,
                    rounds_ready=on_rounds,
                    error="; ".join(errors) or None,
                )
            )
    return ReadinessFlip(
        backend=target.name,
        node=target.node,
        bound=bound,
        slice_unready_after=slice_unready,
        slice_ready_after=slice_ready,
        followed=tuple(followed),
    )


def _stale(outcome: Outcome) -> bool:
    """The unready backend still answered in this spread."""
    response = outcome.exchange.client_response if outcome.exchange is not None else {}
    counts = response.get("servers") or {}
    return any(counts.get(s) for s in outcome.target.unwanted_servers)


def flip_readiness_once(run: RunInfo, flip: Callable[[], ReadinessFlip]) -> ReadinessFlip:
    """``flip`` (`flip_readiness` with its arguments) once in the whole run (xdist workers
    read the result back); a failure is not repeated: later callers get the same
    `ProbeCallError`."""
    return once_data(
        run,
        READINESS_RECORD,
        flip,
        ReadinessFlip,
        lambda cause: ProbeCallError(f"the readiness flip failed: {cause}"),
    )
