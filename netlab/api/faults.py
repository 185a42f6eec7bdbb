"""Control-plane faults: what a busy, older, real API server does that a healthy lab does not.

Each is switched on at ``netlab up --api-fault NAME[=VALUE]`` (repeatable; ``netlab api-faults``
lists them) or at run time through the lab's admin endpoint (``netlab.api.admin``). They are
kept apart from the data-plane faults (``netlab.faults``): none of them breaks a network rule.

Every random choice is a hash of the seed and of what is being decided (a request's method,
path and how many such requests came before it; a namespace's name), so the same seed and the
same requests give the same faults, however other requests interleave.

This module only parses and describes; the server applies the faults (``netlab.api.injector``,
``netlab.api.controllers.serviceaccounts``, ``netlab.api.controllers.eviction``, ``netlab.api.server``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

DEFAULT_SA_DELAY = (0.5, 1.0)  # seconds: a quiet kube-controller-manager's lag
DEFAULT_RETRY_AFTER = 1  # what priority-and-fairness and the watch cache ask for
DEFAULT_FORBID_USER = "netlab-user"

# name -> (syntax, what it does), as `netlab api-faults` prints them.
API_FAULTS: dict[str, tuple[str, str]] = {
    "sa-delay": (
        "sa-delay=SECONDS[:MAX]",
        "a namespace's `default` ServiceAccount appears SECONDS (or SECONDS..MAX) after the "
        "namespace; until then its pods are refused 403 (always on, default 0.5:1; 0 = at once)",
    ),
    "throttle": (
        "throttle=FRACTION[:RETRY_AFTER]",
        "that fraction of requests is answered 429 with Retry-After (default 1 s), as "
        "priority-and-fairness (text) or a (re)initializing watch cache (Status) does",
    ),
    "server-error": (
        "server-error=FRACTION",
        "that fraction of requests is answered 500 (etcdserver: request timed out) or 503 "
        "(ServiceUnavailable)",
    ),
    "slow": ("slow=FRACTION:SECONDS", "that fraction of requests is answered SECONDS late"),
    "cut-streams": (
        "cut-streams=FRACTION",
        "that fraction of watch and exec streams loses its connection after a random number "
        "of events (0-7, or 0.5-5 s) or output bytes (0-4095, else before the exit status)",
    ),
    "evict": (
        "evict=SELECTOR@DELAY",
        "DELAY after the first pod matching the label SELECTOR is created in a namespace, one "
        "such pod of that namespace is evicted (policy/v1 Eviction); once per namespace; "
        "repeatable",
    ),
    "delete": ("delete=SELECTOR@DELAY", "as evict, but the pod is deleted"),
    "restart": (
        "restart=EVERY:DOWN",
        "every EVERY seconds the API server stops listening and drops every connection for "
        "DOWN seconds, then serves the same state again (resourceVersions go on)",
    ),
    "forbid": (
        "forbid=VERB:RESOURCE[,VERB:RESOURCE]...",
        "403 as RBAC denies it for VERB (or *) on RESOURCE[.GROUP][/SUBRESOURCE], e.g. "
        "create:secrets, list:nodes, create:pods/exec; repeatable",
    ),
    "forbid-user": (
        "forbid-user=NAME",
        f"the user those 403 messages name (default {DEFAULT_FORBID_USER})",
    ),
    "exec-v4-only": (
        "exec-v4-only",
        "exec offers only the v4 channel protocols (and base64), as API servers before 1.30 "
        "do: stdin cannot be half-closed, so payloads go in argv",
    ),
    "seed": ("seed=N", "seed of every random choice above (default 0)"),
}

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class ApiFaultError(ValueError):
    """An API fault that cannot be parsed; the message is one line for the user."""


@dataclass(frozen=True)
class ForbidRule:
    """One (verb, resource) pair that RBAC denies; ``verb`` "*" denies every verb."""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""

    def matches(self, verb: str, group: str, resource: str, subresource: str) -> bool:
        return self.verb in ("*", verb) and (self.resource, self.group, self.subresource) == (
            resource,
            group,
            subresource,
        )

    def __str__(self) -> str:
        text = self.resource + (f".{self.group}" if self.group else "")
        return f"{self.verb}:{text}" + (f"/{self.subresource}" if self.subresource else "")


@dataclass(frozen=True)
class PodDisruption:
    """``evict`` or ``delete`` one pod matching ``selector``, ``delay`` seconds after the first
    such pod appears in a namespace."""

    action: str  # "evict" | "delete"
    selector: str
    delay: float


@dataclass(frozen=True)
class ApiFaults:
    """The API server's fault settings; the defaults are a healthy server with the
    ServiceAccount controller's usual lag."""

    seed: int = 0
    sa_delay: tuple[float, float] = DEFAULT_SA_DELAY
    throttle: float = 0.0
    retry_after: int = DEFAULT_RETRY_AFTER
    server_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 0.0
    cut_streams: float = 0.0
    disruptions: tuple[PodDisruption, ...] = ()
    restart_every: float = 0.0  # 0: never
    restart_down: float = 0.0
    forbid: tuple[ForbidRule, ...] = ()
    forbid_user: str = DEFAULT_FORBID_USER
    exec_v4_only: bool = False
    specs: tuple[str, ...] = field(default=(), compare=False)  # as given, for display

    @property
    def on_requests(self) -> bool:
        """True when some fault acts on requests (the injector's fast path skips otherwise)."""
        return bool(self.throttle or self.server_error or self.slow or self.cut_streams)

    def denied(self, verb: str, group: str, resource: str, subresource: str) -> bool:
        return any(rule.matches(verb, group, resource, subresource) for rule in self.forbid)

    def sa_delay_for(self, namespace: str) -> float:
        """How long after ``namespace`` its `default` ServiceAccount appears."""
        low, high = self.sa_delay
        return low + (high - low) * chance(self.seed, "sa-delay", namespace)


def chance(seed: int, *key: object) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``key``: the same question, the same answer."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def seconds(text: str, what: str) -> float:
    """``10``, ``10s``, ``1.5s``, ``500ms`` or ``2m`` as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ApiFaultError(f"{what}: {text!r} is not a duration (e.g. 10s, 1.5, 500ms)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiFaultError(f"{what}: {text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ApiFaultError(f"{what}: {text!r} is not a number between 0 and 1")
    return value


def _forbid_rule(text: str) -> ForbidRule:
    verb, sep, resource_text = text.strip().partition(":")
    if not sep or not verb or not resource_text:
        raise ApiFaultError(f"forbid: {text!r} is not VERB:RESOURCE (e.g. list:nodes)")
    resource_part, _, subresource = resource_text.partition("/")
    resource, _, group = resource_part.partition(".")
    if not re.fullmatch(r"[a-z*]+", verb) or not re.fullmatch(r"[a-z0-9-]+", resource):
        raise ApiFaultError(f"forbid: {text!r} is not VERB:RESOURCE[.GROUP][/SUBRESOURCE]")
    return ForbidRule(verb, resource, group, subresource)


def _disruption(action: str, text: str) -> PodDisruption:
    selector, sep, delay = text.rpartition("@")
    if not sep or not selector:
        raise ApiFaultError(f"{action}: {text!r} is not SELECTOR@DELAY (e.g. app=web@10s)")
    from netlab.api.errors import ApiError  # local: only selectors need the server's errors
    from netlab.api.selectors import parse_label_selector

    try:
        parse_label_selector(selector)
    except ApiError as error:
        raise ApiFaultError(f"{action}: {error}") from None
    return PodDisruption(action, selector, seconds(delay, action))


def _pair(text: str, what: str, parse_first: Callable[[str], float]) -> tuple[float, float]:
    first, sep, second = text.partition(":")
    if not sep:
        raise ApiFaultError(f"{what}: {text!r} needs two values separated by ':'")
    return parse_first(first), seconds(second, what)


def parse_api_faults(specs: Iterable[str]) -> ApiFaults:
    """``NAME[=VALUE]`` strings as ApiFaults; later values win, forbid/evict/delete add up."""
    given = tuple(spec.strip() for spec in specs if spec.strip())
    faults = ApiFaults(specs=given)
    for spec in given:
        name, has_value, value = spec.partition("=")
        if name not in API_FAULTS:
            raise ApiFaultError(f"unknown API fault {name!r}; `netlab api-faults` lists them")
        if name == "exec-v4-only":
            if has_value:
                raise ApiFaultError("exec-v4-only takes no value")
            faults = replace(faults, exec_v4_only=True)
        elif not value:
            raise ApiFaultError(f"{name} needs a value: {API_FAULTS[name][0]}")
        else:
            faults = _with(faults, name, value)
    return faults


def _with(faults: ApiFaults, name: str, value: str) -> ApiFaults:
    """``faults`` with one NAME=VALUE applied."""
    if name == "seed":
        if not value.isdigit():
            raise ApiFaultError(f"seed: {value!r} is not a non-negative integer")
        return replace(faults, seed=int(value))
    if name == "sa-delay":
        low_text, _, high_text = value.partition(":")
        low = seconds(low_text, name)
        high = seconds(high_text, name) if high_text else low
        if high < low:
            raise ApiFaultError(f"sa-delay: {value!r} has MAX below SECONDS")
        return replace(faults, sa_delay=(low, high))
    if name == "throttle":
        share, _, retry = value.partition(":")
        faults = replace(faults, throttle=fraction(share, name))
        if not retry:
            return faults
        if not retry.isdigit() or int(retry) < 1:
            raise ApiFaultError(f"throttle: Retry-After {retry!r} is not a whole second")
        return replace(faults, retry_after=int(retry))
    if name == "server-error":
        return replace(faults, server_error=fraction(value, name))
    if name == "slow":
        slow, delay = _pair(value, name, lambda text: fraction(text, name))
        return replace(faults, slow=slow, slow_seconds=delay)
    if name == "cut-streams":
        return replace(faults, cut_streams=fraction(value, name))
    if name in ("evict", "delete"):
        return replace(faults, disruptions=(*faults.disruptions, _disruption(name, value)))
    if name == "restart":
        every, down = _pair(value, name, lambda text: seconds(text, name))
        if every <= 0:
            raise ApiFaultError("restart: EVERY must be more than 0 s")
        return replace(faults, restart_every=every, restart_down=down)
    if name == "forbid":
        rules = tuple(_forbid_rule(part) for part in value.split(","))
        return replace(faults, forbid=(*faults.forbid, *rules))
    assert name == "forbid-user", name
    return replace(faults, forbid_user=value)


def describe_api_faults() -> str:
    """One line per API fault, as `netlab api-faults` prints them."""
    width = max(len(syntax) for syntax, _ in API_FAULTS.values())
    return "\n".join(f"{syntax:<{width}}  {text}" for syntax, text in API_FAULTS.values())


class FaultSwitch:
    """The lab's current API faults. Replaced as a whole at run time; every part of the server
    reads ``current`` when it acts, and subscribers hear of each change (timers re-arm)."""

    def __init__(self, faults: ApiFaults) -> None:
        self.current = faults
        self._subscribers: list[Callable[[ApiFaults], None]] = []

    def subscribe(self, callback: Callable[[ApiFaults], None]) -> None:
        self._subscribers.append(callback)

    def set(self, faults: ApiFaults) -> None:
        self.current = faults
        for callback in list(self._subscribers):
            callback(faults)
