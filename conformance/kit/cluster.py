"""Cluster access: an API client from kubeconfig/context/in-cluster, API calls with bounded
retries, and what nodes, pods and Services say (addresses, podCIDRs, declared IP families).
Which nodes a run tests is `conformance.kit.nodes`; the run's plan, `conformance.kit.discovery`."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from conformance.kit.cni import recognise_cni
from conformance.kit.errors import ClusterError
from conformance.kit.permissions import explain_forbidden
from conformance.kit.report import CNI_UNKNOWN, ClusterFacts
from conformance.kit.settings import Settings, Timeouts

if TYPE_CHECKING:  # discovery builds on this module
    from conformance.kit.discovery import Discovery

T = TypeVar("T")


def name_of(obj: Any) -> str:
    """``metadata.name`` of a client model ("" when unset)."""
    meta = getattr(obj, "metadata", None)
    return str(meta.name) if meta is not None and meta.name else ""


def labels_of(obj: Any) -> dict[str, str]:
    """``metadata.labels`` of a client model (empty when unset)."""
    meta = getattr(obj, "metadata", None)
    return dict(meta.labels or {}) if meta is not None else {}


def resource_version_of(listed: Any) -> str | None:
    """``metadata.resourceVersion`` of a list, to start a watch right after it."""
    meta = getattr(listed, "metadata", None)
    return str(meta.resource_version) if meta is not None and meta.resource_version else None


def watch_events(
    list_fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """Watch events of ``list_fn`` for at most ``timeout`` seconds (server- and client-side)."""
    watcher = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        yield from watcher.stream(  # type: ignore[no-untyped-call]
            list_fn,
            *args,
            timeout_seconds=max(1, int(timeout)),
            _request_timeout=timeout + 10,
            **kwargs,
        )
    finally:
        watcher.stop()  # type: ignore[no-untyped-call]


def make_api_client(settings: Settings) -> client.ApiClient:
    """A client for the kubeconfig (and context) in ``settings``, or in-cluster when none."""
    try:
        if settings.kubeconfig:
            api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, context=settings.context, persist_config=False
            )
        else:
            configuration = client.Configuration()
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            api = client.ApiClient(configuration)
    except (config.ConfigException, OSError, ValueError) as exc:
        if settings.kubeconfig:
            where = f"kubeconfig {settings.kubeconfig}"
            if settings.context:
                where += f" (context {settings.context})"
        else:
            where = "in-cluster configuration (no --kubeconfig, $KUBECONFIG or ~/.kube/config)"
        raise ClusterError(f"cannot load {where}: {exc}") from exc
    # Exec/watch streams must not hang behind a proxy-less default retry storm.
    api.configuration.retries = 1
    return api


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: throttling, server errors, broken connections."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _status_message(body: str) -> str | None:
    """The ``message`` of a Status body, None when the body is not one."""
    try:
        status = json.loads(body)
    except ValueError:
        return None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message) if message else None


def describe_api_error(exc: BaseException) -> str:
    """A one-line reason for an API failure (status, reason, the server's message); an RBAC
    denial also names the missing permission and what needs it (`explain_forbidden`)."""
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
        if body and exc.status == 403:
            message = f"{message}: {_status_message(str(body)) or str(body).strip()[:500]}"
        elif body:
            message = f"{message}: {str(body).strip()[:500]}"
        # A refused exec handshake carries the 403 in its reason (status 0).
        explained = explain_forbidden(message)
        described = f"HTTP {exc.status} {message}".strip()
        return f"{described}; {explained}" if explained else described
    return f"{type(exc).__name__}: {exc}"


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds a 429/503 answer asks the client to wait (its ``Retry-After`` header, or the
    Status's ``details.retryAfterSeconds``); None when it does not say."""
    if not isinstance(exc, ApiException):
        return None
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    try:
        details = (json.loads(body or "") or {}).get("details") or {}
        return float(details["retryAfterSeconds"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


#: At most this long a Retry-After is honoured (a server asking for more is not waited on
#: beyond the call's retry budget anyway).
MAX_RETRY_AFTER = 30.0


def _wait_for_retry(state: RetryCallState) -> float:
    """Exponential back-off, at least what the server's Retry-After asks."""
    backoff = float(wait_exponential(multiplier=0.5, max=5)(state))
    outcome = state.outcome
    asked = retry_after(outcome.exception() if outcome is not None else None)
    return max(backoff, min(asked, MAX_RETRY_AFTER)) if asked is not None else backoff


def call_api(what: str, fn: Callable[..., T], *args: Any, timeouts: Timeouts, **kwargs: Any) -> T:
    """Call ``fn`` with bounded retries on transient errors; raise `ClusterError` naming ``what``.

    Non-transient API errors (403, 404, 422...) are not retried; 404 is re-raised as the
    original ``ApiException`` so callers can treat "already gone" as success.
    """
    kwargs.setdefault("_request_timeout", timeouts.api_request)

    def give_up(state: RetryCallState) -> T:
        outcome = state.outcome
        assert outcome is not None
        exc = outcome.exception()
        assert exc is not None
        raise ClusterError(
            f"{what} failed after {state.attempt_number} attempts "
            f"({timeouts.api_retry:.0f}s budget): {describe_api_error(exc)}"
        ) from exc

    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(timeouts.api_retry),
            wait=_wait_for_retry,
            retry_error_callback=give_up,
        ):
            with attempt:
                return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            raise
        raise ClusterError(f"{what} failed: {describe_api_error(exc)}") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


# --- nodes ---------------------------------------------------------------------------------


def node_addresses(node: client.V1Node) -> tuple[str, ...]:
    """Every address the node reports, InternalIP first."""
    addresses = (node.status.addresses if node.status else None) or []
    ordered = sorted(addresses, key=lambda a: a.type != "InternalIP")
    return tuple(str(a.address) for a in ordered)


def node_ip_addresses(node: client.V1Node) -> tuple[str, ...]:
    """The node's addresses that are IP literals (hostnames dropped), InternalIP first."""
    ips = []
    for address in node_addresses(node):
        try:
            ips.append(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return tuple(ips)


def node_pod_cidrs(node: client.V1Node) -> tuple[str, ...]:
    """``spec.podCIDRs`` (or the single ``spec.podCIDR``), possibly empty."""
    spec = node.spec
    if spec is None:
        return ()
    if spec.pod_cidrs:
        return tuple(str(c) for c in spec.pod_cidrs)
    return (str(spec.pod_cidr),) if spec.pod_cidr else ()


def list_nodes(core: client.CoreV1Api, timeouts: Timeouts) -> list[client.V1Node]:
    """Every node of the cluster."""
    result = call_api("list nodes", core.list_node, timeouts=timeouts)
    return list(result.items)


def list_pods_all_namespaces(core: client.CoreV1Api, timeouts: Timeouts) -> list[client.V1Pod]:
    """Every pod of the cluster."""
    result = call_api(
        "list pods in all namespaces", core.list_pod_for_all_namespaces, timeouts=timeouts
    )
    return list(result.items)


def pod_ips(pod: client.V1Pod) -> tuple[str, ...]:
    """``status.podIPs`` (or the single ``status.podIP``), possibly empty."""
    status = pod.status
    if status is None:
        return ()
    if status.pod_ips:
        return tuple(str(p.ip) for p in status.pod_ips if p.ip)
    return (str(status.pod_ip),) if status.pod_ip else ()


def pod_network_families(pods: Sequence[client.V1Pod]) -> tuple[int, ...]:
    """IP versions (4, 6) the pods in the pod network hold (hostNetwork pods left out)."""
    versions: set[int] = set()
    for pod in pods:
        if pod.spec is not None and pod.spec.host_network:
            continue
        for ip in pod_ips(pod):
            versions.add(ipaddress.ip_address(ip).version)
    return tuple(sorted(versions))


def service_cluster_ips(core: client.CoreV1Api, timeouts: Timeouts) -> tuple[str, ...]:
    """ClusterIPs of ``default/kubernetes``: addresses known to lie in the service range."""
    try:
        svc = call_api(
            "read service default/kubernetes",
            core.read_namespaced_service,
            "kubernetes",
            "default",
            timeouts=timeouts,
        )
    except ApiException:
        return ()
    spec = svc.spec
    if spec is None:
        return ()
    ips = spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else [])
    return tuple(str(ip) for ip in ips if ip and ip != "None")


def kubernetes_service_families(core: client.CoreV1Api, timeouts: Timeouts) -> tuple[str, ...]:
    """The ``default/kubernetes`` Service's ``spec.ipFamilies`` (``IPv4``, ``IPv6``), else its
    cluster IPs (clusters before ipFamilies); empty when the Service does not exist. A refusal
    (403...) raises `ClusterError`: which families the cluster declares would be unknown."""
    try:
        svc = call_api(
            "read service default/kubernetes",
            core.read_namespaced_service,
            "kubernetes",
            "default",
            timeouts=timeouts,
        )
    except ApiException:  # 404: call_api re-raises it as it is
        return ()
    spec = svc.spec
    if spec is None:
        return ()
    if spec.ip_families:
        return tuple(str(f) for f in spec.ip_families)
    ips = spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else [])
    return tuple(str(ip) for ip in ips if ip and ip != "None")


def declared_service_cidrs(api: client.ApiClient, timeouts: Timeouts) -> tuple[str, ...]:
    """The ranges of the cluster's ServiceCIDR objects (networking.k8s.io/v1, Kubernetes
    1.33+), empty where the API is not served (404); a refusal (403...) raises `ClusterError`,
    as the families they declare would be unknown."""
    try:
        listed = call_api(
            "list servicecidrs.networking.k8s.io",
            client.NetworkingV1Api(api).list_service_cidr,
            timeouts=timeouts,
        )
    except ApiException:  # 404: not served
        return ()
    cidrs: list[str] = []
    for item in listed.items or []:
        cidrs.extend(str(c) for c in (item.spec.cidrs if item.spec else None) or [])
    return tuple(sorted(set(cidrs)))


def service_cidrs(api: client.ApiClient, timeouts: Timeouts) -> tuple[str, ...]:
    """The service ranges from the ServiceCIDR API (networking.k8s.io/v1, Kubernetes 1.33+);
    empty when the cluster does not serve it or we may not read it."""
    try:
        listed = client.NetworkingV1Api(api).list_service_cidr(
            _request_timeout=timeouts.api_request
        )
    except (ApiException, urllib3.exceptions.HTTPError, AttributeError):
        return ()
    cidrs: list[str] = []
    for item in listed.items or []:
        cidrs.extend(str(c) for c in (item.spec.cidrs if item.spec else None) or [])
    return tuple(sorted(set(cidrs)))


def detect_cni(api: client.ApiClient, timeouts: Timeouts) -> tuple[str, str]:
    """(CNI, evidence) from the cluster's DaemonSets (see `conformance.kit.cni`): one list
    request, no retries; a refused or unserved list is ``unknown``, the evidence saying why."""
    try:
        listed = client.AppsV1Api(api).list_daemon_set_for_all_namespaces(
            _request_timeout=timeouts.api_request
        )
    except ApiException as exc:
        return CNI_UNKNOWN, f"DaemonSets not readable: HTTP {exc.status} {exc.reason or ''}".strip()
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        return CNI_UNKNOWN, f"DaemonSets not readable: {describe_api_error(exc)}"
    return recognise_cni(listed.items or [])


def cluster_facts(
    api: client.ApiClient,
    nodes: Sequence[client.V1Node],
    discovery: Discovery,
    settings: Settings,
) -> ClusterFacts:
    """Facts about the cluster under test for the report."""
    try:
        version = client.VersionApi(api).get_code(_request_timeout=settings.timeouts.api_request)
        server_version = str(version.git_version)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        server_version = f"unknown ({describe_api_error(exc)})"
    by_name = {name_of(n): n for n in nodes}
    probed = [by_name[n] for n in discovery.nodes if n in by_name]
    services = service_cidrs(api, settings.timeouts)
    cni, cni_evidence = detect_cni(api, settings.timeouts)
    return ClusterFacts(
        server_version=server_version,
        node_count=len(nodes),
        nodes_tested=discovery.nodes,
        pod_cidrs=tuple(f"{name_of(n)}={c}" for n in probed for c in node_pod_cidrs(n)),
        service_cidr=",".join(services) or None,
        ip_families=tuple(f"ipv{f}" for f in discovery.families),
        probe_image=settings.probe_image,
        cni=cni,
        cni_evidence=cni_evidence,
    )


# --- IPAM ------------------------------------------------------------------------------------

#: IPAMs that allocate pod IPs from pools of their own and ignore ``node.spec.podCIDR`` by
#: design, found by their pool resources: (IPAM, API group, version, plural).
POOL_IPAM_RESOURCES = (
    ("Calico IPAM", "crd.projectcalico.org", "v1", "ippools"),
    ("Calico IPAM", "projectcalico.org", "v3", "ippools"),
)


@dataclass(frozen=True)
class PoolIPAM:
    """An IPAM found in the cluster that hands out pod IPs from its own pools."""

    ipam: str
    resource: str
    pools: tuple[str, ...]

    def reason(self) -> str:
        """Why the podCIDR containment rule does not apply, for the skip message."""
        shown = ", ".join(self.pools[:5]) + (" ..." if len(self.pools) > 5 else "")
        return (
            f"{self.ipam} allocates pod IPs from its own pools, not from node podCIDRs "
            f"({len(self.pools)} {self.resource}: {shown}); the node podCIDR rule does not apply"
        )


def _pool_description(item: Any) -> str:
    if not isinstance(item, Mapping):
        return "?"
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    name = str(meta.get("name") or "?") if isinstance(meta, Mapping) else "?"
    cidr = spec.get("cidr") if isinstance(spec, Mapping) else None
    return f"{name} ({cidr})" if cidr else name


def detect_pool_ipam(api: client.ApiClient, timeouts: Timeouts) -> PoolIPAM | None:
    """The pool-based IPAM the cluster runs (Calico IPPools exist), or ``None``.

    One request per known resource, no retries. A resource the server does not serve (404)
    counts as absent, and so does any other failure but one: when no resource showed pools and
    RBAC forbade a list (403), whether the rule applies is unknown, and `ClusterError` names
    the missing permission.
    """
    custom = client.CustomObjectsApi(api)
    forbidden: list[str] = []
    for ipam, group, version, plural in POOL_IPAM_RESOURCES:
        try:
            listed = custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=timeouts.api_request
            )
        except ApiException as exc:
            if exc.status == 403:  # not "absent": unknown, unless another resource answers
                forbidden.append(f"list {plural}.{group}: {describe_api_error(exc)}")
            continue
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            continue
        items = listed.get("items") if isinstance(listed, Mapping) else None
        if isinstance(items, list) and items:
            return PoolIPAM(
                ipam=ipam,
                resource=f"{plural}.{group}/{version}",
                pools=tuple(_pool_description(item) for item in items),
            )
    if forbidden:
        raise ClusterError("; ".join(forbidden))
    return None
