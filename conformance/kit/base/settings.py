"""Parsed command-line options (`Settings`) and every deadline of a run (`Timeouts`).

The option parsers here are argparse ``type=`` callables: they raise ``pytest.UsageError`` so a
bad value stops pytest before anything touches a cluster.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import pytest

DEFAULT_PROBE_IMAGE = "nicolaka/netshoot:v0.13"
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
IP_FAMILIES = ("auto", "ipv4", "ipv6", "dual")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
CONTROL_PLANE_TAINT_KEYS = (
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
)
#: ``--allow-excluded`` kinds (see `conformance.kit.cluster.nodes`): nodes the suite leaves out on its
#: own judgement (not Linux, not Ready, a NoExecute taint the probes do not tolerate), accepted
#: so they do not make the run exit 2; and nodes it tests by default (cordoned, NoSchedule
#: taints: probes pinned by nodeName ignore both), which are then left out.
ALLOWABLE_EXCLUSIONS = ("windows", "not-linux", "not-ready", "noexecute", "cordoned", "noschedule")
#: Where ``--image-pull-secret NAME`` (no namespace given) is copied from.
DEFAULT_SECRET_NAMESPACE = "default"
#: Seconds a run's lease on its namespace lasts unless renewed (``--run-lease``; see
#: `conformance.kit.cluster.lease`): generous, as a busy API server may refuse a few renewals.
DEFAULT_RUN_LEASE = 300.0
#: ``--max-loss``: the percentage of an exchange's probes that may be lost before its pair
#: fails. With `conformance.kit.exchanges.reachability.LOSS_PROBES` probes (100) an exchange fails from 6
#: lost on: a pair losing 20 % passes with a chance of 2e-5, and a background loss of 0.5 %
#: (far above what healthy labs and clusters showed) fails one with a chance of 1e-5
#: (docs/architecture.md, "Loss").
DEFAULT_MAX_LOSS = 5.0

#: ``--external-host ADDR`` without a port: the edge server's TCP and UDP listeners; its
#: control listener is the port after (`ExternalHost.control_port`).
DEFAULT_EDGE_PORT = 18080
# A host name: dot-separated labels of letters, digits and hyphens (RFC 1123).
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$"
)

# A label key is an optional DNS-subdomain prefix and a name; values are short names.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
# Secret names are DNS subdomains, namespaces DNS labels.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Timeouts:
    """Every deadline of a run, in seconds. One place, so a slow cluster is tuned once.

    All waits in the suite take their bound from here; none waits forever.
    """

    #: One Kubernetes API request (client-side socket timeout).
    api_request: float = 30.0
    #: Total budget for retrying one API call on transient errors (5xx, 429, connection reset).
    api_retry: float = 60.0
    #: Discovering and listing nodes at collection time.
    discovery: float = 30.0
    #: A new namespace's ``default`` ServiceAccount made by the controller manager.
    service_account: float = 60.0
    #: All probe pods scheduled, images pulled and Ready (image pulls dominate).
    pods_ready: float = 300.0
    #: One batched exec of the probe agent (``agent.py call``), beyond the probes' own timeouts.
    exec_overhead: float = 30.0
    #: One network attempt inside the agent (connect, UDP round trip, ICMP echo).
    probe: float = 5.0
    #: How long the agent's sniffer is given to see a packet after the probe returned. Only a
    #: packet that is missing is waited for; a loaded node's sniffer can lag seconds behind.
    capture_wait: float = 10.0
    #: Tries for an "eventually reachable" check before it counts as broken.
    reach_attempts: int = 3
    #: A killed sandbox container restarted and Ready again.
    container_restart: float = 180.0
    #: A second pod asking for a taken hostPort refused (or running) on its node.
    hostport_clash: float = 30.0
    #: A backend's readiness change shown in its Service's EndpointSlice.
    endpoint_update: float = 30.0
    #: The Service data plane of every node following an EndpointSlice change (kube-proxy syncs
    #: at most every second by default).
    endpoint_follow: float = 10.0
    #: Run namespace gone after deletion (finalizers, pod termination).
    namespace_delete: float = 180.0
    #: A node whose Ready condition or taints say it (or its network) is not ready, given the
    #: time to clear before it is judged: the node lifecycle controller lifts the not-ready
    #: taint some seconds after Ready turns True (its monitor period is 5 s).
    node_ready: float = 60.0

    @classmethod
    def for_probe_timeout(cls, probe_timeout: float) -> Timeouts:
        """Timeouts with ``probe`` set from ``--probe-timeout`` and the exec budget scaled to it."""
        return cls(probe=probe_timeout, exec_overhead=max(30.0, 4 * probe_timeout))

    def exec_budget(self, probes_in_batch: int, parallel: int = 1) -> float:
        """Deadline for one exec holding ``probes_in_batch`` network attempts, ``parallel`` of
        them at a time."""
        rounds = -(-probes_in_batch // max(1, parallel))
        return self.exec_overhead + rounds * (self.probe + self.capture_wait)


@dataclass(frozen=True)
class TaintToleration:
    """A taint the probes tolerate (operator Exists, any value); ``effect`` None means every
    effect of that key."""

    key: str
    effect: str | None = None

    def tolerates(self, key: str, effect: str) -> bool:
        """Whether a taint ``key:effect`` is tolerated."""
        return key == self.key and self.effect in (None, effect)

    def __str__(self) -> str:
        return f"{self.key}:{self.effect}" if self.effect else self.key


@dataclass(frozen=True)
class PullSecret:
    """``--image-pull-secret [NAMESPACE/]NAME``: a Secret copied into the run namespace and
    named in every probe pod's ``imagePullSecrets``."""

    name: str
    namespace: str = DEFAULT_SECRET_NAMESPACE

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ExternalHost:
    """``--external-host ADDR[:PORT]``: a host outside the cluster running the edge server
    (``agent.py serve --edge-control``). ``host`` is an IP literal or a name (resolved by the
    probe pods' resolver); the server's TCP and UDP listeners are on ``port``, its control
    listener on ``port + 1``."""

    host: str
    port: int = DEFAULT_EDGE_PORT

    @property
    def control_port(self) -> int:
        return self.port + 1

    @property
    def family(self) -> int | None:
        """4 or 6 for an IP literal, None for a name."""
        try:
            return ipaddress.ip_address(self.host).version
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _ConfigLike(Protocol):
    def getoption(self, name: str, default: Any = ...) -> Any: ...


def parse_node_selector(text: str) -> Mapping[str, str]:
    """``k=v,k2=v2`` as a read-only mapping; an empty string selects every node."""
    selector: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise pytest.UsageError(
                f"--node-selector: {item!r} is not a label match of the form key=value "
                "(separate several with commas)"
            )
        if key in selector and selector[key] != value:
            raise pytest.UsageError(f"--node-selector: key {key!r} given twice")
        selector[key] = value
    return MappingProxyType(selector)


Number = TypeVar("Number", int, float)
_NUMBER_NOUNS: Mapping[type, str] = {int: "a whole number", float: "a number of seconds"}


def _parse_number(
    option: str, text: str, kind: type[Number], fits: Callable[[Number], bool], bounds: str
) -> Number:
    """``text`` as a ``kind`` (int: a whole number, float: seconds) for which ``fits`` holds;
    else a `pytest.UsageError` naming ``option`` and, for a number out of range, ``bounds``."""
    try:
        value = kind(text)
    except ValueError:
        raise pytest.UsageError(f"{option}: {text!r} is not {_NUMBER_NOUNS[kind]}") from None
    if not fits(value):
        raise pytest.UsageError(f"{option}: must be {bounds}, got {value}")
    return value


def parse_max_nodes(text: str) -> int:
    """A node count of at least 1."""
    return _parse_number("--max-nodes", text, int, lambda value: value >= 1, "at least 1")


def parse_probe_timeout(text: str) -> float:
    """Seconds, more than 0 and at most 300."""
    return _parse_number(
        "--probe-timeout", text, float, lambda value: 0 < value <= 300, "in (0, 300] seconds"
    )


def parse_image_pull_policy(text: str) -> str:
    """One of Always, IfNotPresent, Never (case-insensitive on input, canonical on output)."""
    for policy in IMAGE_PULL_POLICIES:
        if text.lower() == policy.lower():
            return policy
    raise pytest.UsageError(
        f"--image-pull-policy: {text!r} is not one of {', '.join(IMAGE_PULL_POLICIES)}"
    )


def parse_ip_family(text: str) -> str:
    """One of auto, ipv4, ipv6, dual."""
    value = text.lower()
    if value not in IP_FAMILIES:
        raise pytest.UsageError(f"--ip-family: {text!r} is not one of {', '.join(IP_FAMILIES)}")
    return value


def parse_pairs(text: str) -> str:
    """``all``, ``auto`` or ``sample:K`` (K at least 1): which cross-node pairs a run checks."""
    value = text.strip().lower()
    if value in ("all", "auto"):
        return value
    mode, sep, count = value.partition(":")
    if mode == "sample" and sep and count.isdigit() and int(count) >= 1:
        return f"sample:{int(count)}"
    raise pytest.UsageError(
        f"--pairs: {text!r} is not all, auto or sample:K (K pairs per node, at least 1)"
    )


def parse_pairs_seed(text: str) -> int:
    """A whole number from 0 to 2**63 - 1."""
    return _parse_number(
        "--pairs-seed", text, int, lambda value: 0 <= value < 2**63, "in [0, 2**63)"
    )


def parse_run_lease(text: str) -> float:
    """Seconds, at least 5 and at most a day (``--run-lease``)."""
    return _parse_number(
        "--run-lease", text, float, lambda value: 5 <= value <= 86400, "in [5, 86400] seconds"
    )


def parse_max_loss(text: str) -> float:
    """A percentage from 0 (no probe may be lost) to below 100 (``--max-loss``)."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise pytest.UsageError(f"--max-loss: {text!r} is not a percentage") from None
    if not 0 <= value < 100:  # NaN fails too
        raise pytest.UsageError(f"--max-loss: must be a percentage in [0, 100), got {text}")
    return value


def parse_probe_image(text: str) -> str:
    """A non-empty image reference without whitespace."""
    if not text or any(ch.isspace() for ch in text):
        raise pytest.UsageError(f"--probe-image: {text!r} is not an image reference")
    return text


def parse_taint_toleration(text: str) -> TaintToleration:
    """``KEY`` (every effect) or ``KEY:EFFECT`` with EFFECT one of NoSchedule,
    PreferNoSchedule, NoExecute (case-insensitive on input)."""
    key, sep, effect_text = text.strip().partition(":")
    key = key.strip()
    if not _LABEL_KEY.match(key):
        raise pytest.UsageError(
            f"--tolerate-taint: {text!r} is not KEY or KEY:EFFECT with a taint key"
        )
    if not sep:
        return TaintToleration(key)
    for effect in TAINT_EFFECTS:
        if effect_text.strip().lower() == effect.lower():
            return TaintToleration(key, effect)
    raise pytest.UsageError(
        f"--tolerate-taint: effect {effect_text!r} is not one of {', '.join(TAINT_EFFECTS)}"
    )


def parse_exclude_node(text: str) -> str:
    """A node name (a DNS subdomain); whether the cluster has it is checked at discovery."""
    name = text.strip()
    if not _DNS_SUBDOMAIN.match(name):
        raise pytest.UsageError(f"--exclude-node: {text!r} is not a node name")
    return name


def parse_allow_excluded(text: str) -> tuple[str, ...]:
    """``KIND[,KIND...]`` from `ALLOWABLE_EXCLUSIONS` (case-insensitive on input)."""
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in ALLOWABLE_EXCLUSIONS]
    if unknown or not kinds:
        raise pytest.UsageError(
            f"--allow-excluded: {', '.join(unknown) or repr(text)} is not one of "
            f"{', '.join(ALLOWABLE_EXCLUSIONS)} (separate several with commas)"
        )
    return kinds


def parse_pull_secret(text: str) -> PullSecret:
    """``NAME`` (a Secret in namespace ``default``) or ``NAMESPACE/NAME``."""
    namespace, sep, name = text.strip().rpartition("/")
    if not sep:
        namespace = DEFAULT_SECRET_NAMESPACE
    if not _DNS_SUBDOMAIN.match(name) or not _DNS_LABEL.match(namespace):
        raise pytest.UsageError(
            f"--image-pull-secret: {text!r} is not a Secret name or NAMESPACE/NAME"
        )
    return PullSecret(name=name, namespace=namespace)


def parse_external_host(text: str) -> ExternalHost:
    """``ADDR``, ``ADDR:PORT`` or ``[IPv6]:PORT``: ADDR an IPv4 or IPv6 literal (a bare IPv6
    literal takes no port) or a host name; PORT 1..65534 (the control listener is PORT + 1)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise pytest.UsageError(f"--external-host: {text!r} is not [IPv6] or [IPv6]:PORT")
        host, port_text = inside, rest[1:] if rest else ""
        if ":" not in host or not _is_ip(host):
            raise pytest.UsageError(f"--external-host: {host!r} in brackets is not an IPv6 address")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise pytest.UsageError(f"--external-host: {text!r} names no port after ':'")
    if ":" in host and not _is_ip(host):
        raise pytest.UsageError(f"--external-host: {host!r} is not an IPv6 address")
    if not _is_ip(host) and (not _HOST_NAME.match(host) or re.fullmatch(r"[0-9.]+", host)):
        raise pytest.UsageError(
            f"--external-host: {host!r} is not an IPv4 or IPv6 address or a host name "
            "(ADDR, ADDR:PORT or [IPv6]:PORT)"
        )
    if not port_text:
        return ExternalHost(host.rstrip("."))
    port = _parse_number(
        "--external-host port", port_text, int, lambda v: 1 <= v <= 65534, "in [1, 65534]"
    )
    return ExternalHost(host.rstrip("."), port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_external_hosts(hosts: Sequence[ExternalHost]) -> tuple[ExternalHost, ...]:
    """The hosts in order, duplicates dropped; two IP literals of one family (the edge checks
    use one address per family), or two ports (one edge server serves them all), are an
    error."""
    found: dict[str, ExternalHost] = {}
    ports = {host.port for host in hosts}
    if len(ports) > 1:
        raise pytest.UsageError(
            f"--external-host: one edge server, one port: got ports {sorted(ports)}"
        )
    for host in dict.fromkeys(hosts):
        family = host.family
        key = f"ipv{family}" if family is not None else f"name {host.host}"
        if key in found:
            raise pytest.UsageError(
                f"--external-host: {found[key]} and {host} are both {key.replace('ipv', 'IPv')} "
                "addresses; give the outside host one address per family"
            )
        found[key] = host
    return tuple(found.values())


def check_pull_secrets(secrets: Sequence[PullSecret]) -> tuple[PullSecret, ...]:
    """The secrets in order, duplicates dropped; two namespaces giving one name is an error
    (both would land under that name in the run namespace)."""
    by_name: dict[str, PullSecret] = {}
    for secret in secrets:
        seen = by_name.setdefault(secret.name, secret)
        if seen != secret:
            raise pytest.UsageError(
                f"--image-pull-secret: {seen} and {secret} would both be copied as "
                f"{secret.name!r} into the run namespace"
            )
    return tuple(by_name.values())


def resolve_kubeconfig(option: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The kubeconfig to use: the option, then ``$KUBECONFIG``, then ``~/.kube/config`` if it
    exists; ``None`` means in-cluster configuration."""
    env = os.environ if environ is None else environ
    if option:
        return option
    if env.get("KUBECONFIG"):
        return env["KUBECONFIG"]
    default = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
    return str(default) if default.is_file() else None


@dataclass(frozen=True)
class Settings:
    """Everything the options say about a run, parsed and validated."""

    kubeconfig: str | None
    context: str | None
    probe_image: str = DEFAULT_PROBE_IMAGE
    image_pull_policy: str = "IfNotPresent"
    node_selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_nodes: int | None = None
    include_control_plane: bool = False
    probe_timeout: float = 5.0
    keep_namespace: bool = False
    ip_family: str = "auto"
    cleanup_stale: bool = False
    #: ``--run-lease``: seconds the run's lease on its namespace lasts unless renewed.
    run_lease: float = DEFAULT_RUN_LEASE
    #: A pass on retry counts as broken (``--strict-reachability``).
    strict: bool = False
    #: ``--max-loss``: percent of an exchange's probes that may be lost (see `max_loss_ratio`).
    max_loss: float = DEFAULT_MAX_LOSS
    #: ``--pairs``: ``all``, ``auto`` or ``sample:K``; ``--pairs-seed`` (None: random per run).
    pairs: str = "auto"
    pairs_seed: int | None = None
    tolerate_taints: tuple[TaintToleration, ...] = ()
    image_pull_secrets: tuple[PullSecret, ...] = ()
    #: ``--exclude-node``: nodes the user leaves out by name.
    exclude_nodes: tuple[str, ...] = ()
    #: ``--allow-excluded``: kinds of nodes that may be left out without exit 2.
    allow_excluded: tuple[str, ...] = ()
    #: ``--external-host``: the outside host's addresses (or names), one per family at most.
    external_hosts: tuple[ExternalHost, ...] = ()
    #: ``--require-network-policy``: a cluster enforcing no NetworkPolicy fails the run.
    require_network_policy: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def tolerations(self) -> tuple[TaintToleration, ...]:
        """Every taint the probes tolerate: ``--tolerate-taint`` and, with
        ``--include-control-plane``, the control-plane taints (any effect)."""
        extra = (
            tuple(TaintToleration(key) for key in CONTROL_PLANE_TAINT_KEYS)
            if self.include_control_plane
            else ()
        )
        return tuple(dict.fromkeys((*self.tolerate_taints, *extra)))

    @property
    def max_loss_ratio(self) -> float:
        """The share of an exchange's probes that may be lost: ``--max-loss`` / 100, and 0
        under ``--strict-reachability``."""
        return 0.0 if self.strict else self.max_loss / 100

    @classmethod
    def from_config(cls, config: _ConfigLike) -> Settings:
        """Settings from a pytest config whose options the netconform plugin registered.

        ``--kubeconfig`` is read by option string, so it works when another plugin owns it.
        """
        probe_timeout = float(config.getoption("netconform_probe_timeout"))
        kubeconfig_option = config.getoption("--kubeconfig", None)
        return cls(
            kubeconfig=resolve_kubeconfig(str(kubeconfig_option) if kubeconfig_option else None),
            context=config.getoption("netconform_context") or None,
            probe_image=config.getoption("netconform_probe_image"),
            image_pull_policy=config.getoption("netconform_image_pull_policy"),
            node_selector=config.getoption("netconform_node_selector"),
            max_nodes=config.getoption("netconform_max_nodes"),
            include_control_plane=bool(config.getoption("netconform_include_control_plane")),
            probe_timeout=probe_timeout,
            keep_namespace=bool(config.getoption("netconform_keep_namespace")),
            ip_family=config.getoption("netconform_ip_family"),
            cleanup_stale=bool(config.getoption("netconform_cleanup_stale")),
            run_lease=float(config.getoption("netconform_run_lease", DEFAULT_RUN_LEASE)),
            strict=bool(config.getoption("netconform_strict", False)),
            max_loss=float(config.getoption("netconform_max_loss", DEFAULT_MAX_LOSS)),
            pairs=config.getoption("netconform_pairs", "auto"),
            pairs_seed=config.getoption("netconform_pairs_seed", None),
            tolerate_taints=tuple(
                dict.fromkeys(config.getoption("netconform_tolerate_taints") or ())
            ),
            image_pull_secrets=check_pull_secrets(
                config.getoption("netconform_image_pull_secrets") or ()
            ),
            exclude_nodes=tuple(
                dict.fromkeys(config.getoption("netconform_exclude_nodes", None) or ())
            ),
            allow_excluded=tuple(
                dict.fromkeys(
                    kind
                    for kinds in config.getoption("netconform_allow_excluded", None) or ()
                    for kind in kinds
                )
            ),
            external_hosts=check_external_hosts(
                config.getoption("netconform_external_hosts", None) or ()
            ),
            require_network_policy=bool(
                config.getoption("netconform_require_network_policy", False)
            ),
            timeouts=Timeouts.for_probe_timeout(probe_timeout),
        )
