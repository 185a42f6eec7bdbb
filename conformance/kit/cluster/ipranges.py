"""Where a cluster publishes its address ranges, and which source said so.

The service range. Kubernetes 1.33 serves it as ServiceCIDR objects; before, it is a flag of
kube-apiserver that no API lists. So the sources are asked in turn, and the first that names a
range of the family wins:

1. ServiceCIDR objects (``networking.k8s.io/v1``, or ``v1beta1`` on 1.31-1.32);
2. kubeadm's ConfigMap ``kube-system/kubeadm-config`` (``networking.serviceSubnet`` of its
   ``ClusterConfiguration``);
3. the kube-apiserver pod's ``--service-cluster-ip-range`` (the static pods of ``kube-system``
   labelled ``component=kube-apiserver``);
4. the API server's own answer to a dry-run Service asking for an address outside any sensible
   range: kube-apiserver refuses it with 422 ``failed to allocate IP A: the provided IP (A) is
   not in the valid range. The range of valid IPs is CIDR``.

A node's pod ranges. Kube-controller-manager writes them into ``Node.spec.podCIDRs``, but many
IPAMs hand out pod IPs from ranges of their own and publish those instead:

- Cilium (cluster-pool and multi-pool IPAM): ``CiliumNode`` objects (``cilium.io/v2``), named
  after their node, with ``spec.ipam.podCIDRs`` (multi-pool: ``spec.ipam.pools.allocated``);
- Calico IPAM: IPAM blocks affine to a node (``blockaffinities.crd.projectcalico.org/v1``,
  ``spec.node``, ``spec.cidr``, ``spec.state`` confirmed); a node whose blocks are full may
  borrow addresses from another node's block unless strict affinity is on.

Each answer names its source; a source that gave none says why (not served, empty, refused),
so that a check that cannot find a range skips saying what it asked. Reading never raises for
the cluster: a refused or failing source is an answer too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import call_api, describe_api_error, name_of
from conformance.kit.cluster.cidrs import CIDRParseError, NodeCIDRs, parse_cidr

#: Addresses a dry-run Service asks for, per family: documentation ranges (RFC 5737, RFC 3849),
#: which no cluster uses for Services, so the server names its valid range instead.
OUT_OF_RANGE_PROBES = {4: "192.0.2.1", 6: "2001:db8::1"}
#: The dry-run Service's name (never stored).
PROBE_SERVICE = "netconform-service-range-probe"
_VALID_RANGE = re.compile(r"The range of valid IPs is ([0-9A-Fa-f:./]+[0-9A-Fa-f])")
_APISERVER_FLAG = "--service-cluster-ip-range"

SOURCE_SERVICECIDR = "ServiceCIDR objects"
SOURCE_KUBEADM = "ConfigMap kube-system/kubeadm-config (networking.serviceSubnet)"
SOURCE_APISERVER = "the kube-apiserver pod's --service-cluster-ip-range"
SOURCE_DRY_RUN = "the API server's answer to a dry-run Service outside its range"
SOURCE_CILIUM = "CiliumNode spec.ipam (ciliumnodes.cilium.io/v2)"
SOURCE_CALICO = "Calico IPAM blocks affine to the node (blockaffinities.crd.projectcalico.org/v1)"
SOURCE_NODE = "Node spec.podCIDRs"


@dataclass(frozen=True)
class SourceAnswer:
    """What one source said: the ranges it names (and where exactly), or why it named none."""

    source: str
    cidrs: tuple[str, ...] = ()
    missing: str | None = None
    detail: str = ""  # e.g. which pod's flag, which ServiceCIDR objects

    def of_family(self, version: int) -> tuple[str, ...]:
        return tuple(c for c in self.cidrs if ipaddress.ip_network(c).version == version)

    def label(self) -> str:
        return f"{self.source} ({self.detail})" if self.detail else self.source


def canonical_cidrs(texts: Iterable[str], *, owner: str) -> tuple[str, ...]:
    """``texts`` (flag or field values, comma-separated lists allowed) as canonical CIDRs,
    duplicates dropped; `CIDRParseError` naming ``owner`` for anything else."""
    found: dict[str, None] = {}
    for text in texts:
        for part in str(text).split(","):
            if part.strip():
                found[str(parse_cidr(part, owner=owner))] = None
    return tuple(found)


def _unanswered(source: str, exc: BaseException) -> SourceAnswer:
    """A source that could not be read: 404 not served, anything else as the server said."""
    if isinstance(exc, ApiException) and exc.status == 404:
        return SourceAnswer(source, missing="not served by this cluster (HTTP 404)")
    reason = describe_api_error(exc) if isinstance(exc, ApiException) else str(exc)
    return SourceAnswer(source, missing=f"no answer: {reason}")


# --- the service range: parsing ------------------------------------------------------------------


def service_cidrs_from_servicecidr_objects(items: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """``spec.cidrs`` of every ServiceCIDR not being deleted."""
    texts: list[str] = []
    for item in items:
        meta = item.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        texts.extend((item.get("spec") or {}).get("cidrs") or [])
    return canonical_cidrs(texts, owner="a ServiceCIDR")


def service_cidrs_from_kubeadm_config(data: Mapping[str, str]) -> tuple[str, ...]:
    """``networking.serviceSubnet`` of the ``ClusterConfiguration`` in kubeadm-config's data
    (empty when it is not set)."""
    config = yaml.safe_load(data.get("ClusterConfiguration") or "") or {}
    networking = config.get("networking") if isinstance(config, Mapping) else None
    subnet = networking.get("serviceSubnet") if isinstance(networking, Mapping) else None
    return canonical_cidrs([subnet] if subnet else [], owner="kubeadm-config serviceSubnet")


def service_cidrs_from_apiserver_pod(pod: client.V1Pod) -> tuple[str, ...]:
    """The value of ``--service-cluster-ip-range`` (``=V`` or ``V`` as the next word) in the
    command and args of the pod's containers; empty when none carries the flag."""
    for container in (pod.spec.containers if pod.spec else None) or []:
        words = [*(container.command or []), *(container.args or [])]
        for index, word in enumerate(words):
            if word.startswith(f"{_APISERVER_FLAG}="):
                return canonical_cidrs([word.split("=", 1)[1]], owner=_APISERVER_FLAG)
            if word == _APISERVER_FLAG and index + 1 < len(words):
                return canonical_cidrs([words[index + 1]], owner=_APISERVER_FLAG)
    return ()


def service_cidr_from_refusal(message: str) -> str | None:
    """The valid range named in kube-apiserver's refusal of a ClusterIP outside it (``... The
    range of valid IPs is 10.96.0.0/12``), canonical; None when the message names none."""
    match = _VALID_RANGE.search(message)
    if match is None:
        return None
    try:
        return str(parse_cidr(match.group(1)))
    except CIDRParseError:
        return None


def _status_message(exc: ApiException) -> str:
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        loaded = yaml.safe_load(body)  # JSON is YAML
    except yaml.YAMLError:
        return body
    return str(loaded.get("message") or body) if isinstance(loaded, Mapping) else body


# --- the service range: asking -------------------------------------------------------------------


def ask_servicecidr_objects(api: client.ApiClient, timeouts: Timeouts) -> SourceAnswer:
    custom = client.CustomObjectsApi(api)
    last: BaseException | None = None
    for version in ("v1", "v1beta1"):
        try:
            listed = call_api(
                f"list servicecidrs.networking.k8s.io/{version}",
                custom.list_cluster_custom_object,
                "networking.k8s.io",
                version,
                "servicecidrs",
                timeouts=timeouts,
            )
        except (ApiException, ClusterError) as exc:
            last = exc
            continue
        items = listed.get("items") if isinstance(listed, Mapping) else None
        items = [i for i in items or [] if isinstance(i, Mapping)]
        cidrs = service_cidrs_from_servicecidr_objects(items)
        if not cidrs:
            return SourceAnswer(SOURCE_SERVICECIDR, missing=f"{version} serves none")
        names = ", ".join(sorted(str((i.get("metadata") or {}).get("name")) for i in items))
        return SourceAnswer(SOURCE_SERVICECIDR, cidrs, detail=f"{version}: {names}")
    assert last is not None
    return _unanswered(SOURCE_SERVICECIDR, last)


def ask_kubeadm_config(core: client.CoreV1Api, timeouts: Timeouts) -> SourceAnswer:
    try:
        config_map = call_api(
            "read configmap kube-system/kubeadm-config",
            core.read_namespaced_config_map,
            "kubeadm-config",
            "kube-system",
            timeouts=timeouts,
        )
    except ApiException as exc:
        if exc.status == 404:
            return SourceAnswer(SOURCE_KUBEADM, missing="no such ConfigMap (not a kubeadm cluster)")
        return _unanswered(SOURCE_KUBEADM, exc)
    except ClusterError as exc:
        return _unanswered(SOURCE_KUBEADM, exc)
    try:
        cidrs = service_cidrs_from_kubeadm_config(config_map.data or {})
    except (yaml.YAMLError, CIDRParseError) as exc:
        return SourceAnswer(SOURCE_KUBEADM, missing=f"unreadable ClusterConfiguration: {exc}")
    if not cidrs:
        return SourceAnswer(SOURCE_KUBEADM, missing="networking.serviceSubnet is not set")
    return SourceAnswer(SOURCE_KUBEADM, cidrs)


def ask_apiserver_pods(core: client.CoreV1Api, timeouts: Timeouts) -> SourceAnswer:
    try:
        pods = call_api(
            "list kube-apiserver pods in kube-system",
            core.list_namespaced_pod,
            "kube-system",
            label_selector="component=kube-apiserver",
            timeouts=timeouts,
        ).items
    except (ApiException, ClusterError) as exc:
        return _unanswered(SOURCE_APISERVER, exc)
    if not pods:
        return SourceAnswer(
            SOURCE_APISERVER,
            missing="no pod labelled component=kube-apiserver in kube-system (a managed or "
            "hidden control plane)",
        )
    for pod in sorted(pods, key=name_of):
        try:
            cidrs = service_cidrs_from_apiserver_pod(pod)
        except CIDRParseError as exc:
            return SourceAnswer(SOURCE_APISERVER, missing=f"pod {name_of(pod)}: {exc}")
        if cidrs:
            return SourceAnswer(SOURCE_APISERVER, cidrs, detail=f"pod kube-system/{name_of(pod)}")
    return SourceAnswer(
        SOURCE_APISERVER,
        missing=f"{len(pods)} kube-apiserver pod(s), none with {_APISERVER_FLAG} (the default "
        "range is not written down)",
    )


def ask_dry_run_service(
    core: client.CoreV1Api, namespace: str, family: int, timeouts: Timeouts
) -> SourceAnswer:
    """Ask the API server, in ``namespace``, to validate a Service with a ClusterIP of
    ``family`` outside any sensible range, without storing it (``dryRun=All``)."""
    address = OUT_OF_RANGE_PROBES[family]
    service = client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(name=PROBE_SERVICE, namespace=namespace),
        spec=client.V1ServiceSpec(
            type="ClusterIP",
            cluster_ip=address,
            cluster_ips=[address],
            ip_family_policy="SingleStack",
            ports=[client.V1ServicePort(name="probe", port=80, protocol="TCP")],
        ),
    )
    try:
        call_api(
            f"dry-run create service {PROBE_SERVICE} in {namespace}",
            core.create_namespaced_service,
            namespace,
            service,
            dry_run="All",
            timeouts=timeouts,
        )
    except ApiException as exc:  # 404 only: call_api raises the rest as ClusterError
        return _unanswered(SOURCE_DRY_RUN, exc)
    except ClusterError as exc:
        cause = exc.__cause__
        if isinstance(cause, ApiException) and cause.status == 422:
            message = _status_message(cause)
            cidr = service_cidr_from_refusal(message)
            if cidr is not None:
                return SourceAnswer(SOURCE_DRY_RUN, (cidr,), detail=f"ClusterIP {address}")
            return SourceAnswer(SOURCE_DRY_RUN, missing=f"refused without a range: {message}")
        if isinstance(cause, ApiException) and cause.status == 405:
            return SourceAnswer(
                SOURCE_DRY_RUN, missing="the API server does not create Services (HTTP 405)"
            )
        return _unanswered(SOURCE_DRY_RUN, cause or exc)
    return SourceAnswer(
        SOURCE_DRY_RUN, missing=f"ClusterIP {address} was accepted: the range was not named"
    )


@dataclass(frozen=True)
class ServiceRange:
    """The service range of one IP family, the source that named it, and what every source
    asked before it said (``tried``, in order)."""

    family: int
    cidrs: tuple[str, ...] = ()
    source: str | None = None
    tried: tuple[SourceAnswer, ...] = ()

    def why_unknown(self) -> str:
        """What each source said, for a skip message."""
        return "; ".join(
            f"{a.source}: {a.missing or f'no IPv{self.family} range'}" for a in self.tried
        )


class ServiceRangeFinder:
    """Asks the service-range sources in order, each at most once per finder, and names the
    first that knows a family's range (`range_of`)."""

    def __init__(self, api: client.ApiClient, namespace: str, timeouts: Timeouts) -> None:
        core = client.CoreV1Api(api)
        self._askers: list[tuple[str, Callable[[int], SourceAnswer]]] = [
            (SOURCE_SERVICECIDR, lambda _: ask_servicecidr_objects(api, timeouts)),
            (SOURCE_KUBEADM, lambda _: ask_kubeadm_config(core, timeouts)),
            (SOURCE_APISERVER, lambda _: ask_apiserver_pods(core, timeouts)),
            (SOURCE_DRY_RUN, lambda f: ask_dry_run_service(core, namespace, f, timeouts)),
        ]
        self._answers: dict[tuple[str, int], SourceAnswer] = {}

    def _ask(self, source: str, asker: Callable[[int], SourceAnswer], family: int) -> SourceAnswer:
        # Only the dry run depends on the family; the others are asked once for both.
        key = (source, family if source == SOURCE_DRY_RUN else 0)
        if key not in self._answers:
            self._answers[key] = asker(family)
        return self._answers[key]

    def range_of(self, family: int) -> ServiceRange:
        tried: list[SourceAnswer] = []
        for source, asker in self._askers:
            answer = self._ask(source, asker, family)
            cidrs = answer.of_family(family)
            if cidrs:
                return ServiceRange(family, cidrs, answer.label(), tuple(tried))
            tried.append(answer)
        return ServiceRange(family, tried=tuple(tried))


# --- per-node pod ranges -------------------------------------------------------------------------


def pod_ranges_from_cilium_nodes(items: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """node -> the pod CIDRs its CiliumNode holds: ``spec.ipam.podCIDRs`` (cluster-pool IPAM)
    and every ``spec.ipam.pools.allocated[].cidrs`` (multi-pool IPAM). Nodes with neither
    (ENI, Azure or kubernetes-mode IPAM publish no per-node CIDR here) are left out."""
    ranges: dict[str, tuple[str, ...]] = {}
    for item in items:
        name = str((item.get("metadata") or {}).get("name") or "")
        ipam = (item.get("spec") or {}).get("ipam") or {}
        texts = list(ipam.get("podCIDRs") or [])
        for pool in (ipam.get("pools") or {}).get("allocated") or []:
            texts.extend(pool.get("cidrs") or [])
        if name and texts:
            ranges[name] = canonical_cidrs(texts, owner=f"CiliumNode {name}")
    return ranges


def pod_ranges_from_block_affinities(
    items: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[str, ...]]:
    """node -> the CIDRs of the Calico IPAM blocks confirmed as affine to it (pending and
    pending-deletion affinities and deleted ones left out)."""
    ranges: dict[str, list[str]] = {}
    for item in items:
        spec = item.get("spec") or {}
        if spec.get("state") != "confirmed" or str(spec.get("deleted", "")).lower() == "true":
            continue
        node, cidr = spec.get("node"), spec.get("cidr")
        if node and cidr:
            ranges.setdefault(str(node), []).append(str(cidr))
    return {
        node: canonical_cidrs(texts, owner=f"Calico block of node {node}")
        for node, texts in ranges.items()
    }


@dataclass(frozen=True)
class NodePodRanges:
    """Every node's pod ranges from one source (the IPAM's, else the nodes' podCIDRs), and the
    IPAM sources that could not be read (then a pod IP outside these ranges proves nothing)."""

    source: str
    ranges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unreadable: tuple[str, ...] = ()

    def nodes(self) -> list[NodeCIDRs]:
        """The ranges as `NodeCIDRs` (for `conformance.kit.cluster.cidrs`' checks)."""
        return [NodeCIDRs(node, cidrs) for node, cidrs in sorted(self.ranges.items())]

    @property
    def borrows(self) -> bool:
        """Whether a node may hand out an address of another node's range (Calico does when a
        node's blocks are full and strict affinity is off)."""
        return self.source == SOURCE_CALICO


def _custom_items(
    api: client.ApiClient, group: str, version: str, plural: str, timeouts: Timeouts
) -> tuple[list[Mapping[str, Any]] | None, str | None]:
    """(items, None) when the resource was listed; (None, None) when it is not served; (None,
    why) when it could not be read."""
    try:
        listed = call_api(
            f"list {plural}.{group}/{version}",
            client.CustomObjectsApi(api).list_cluster_custom_object,
            group,
            version,
            plural,
            timeouts=timeouts,
        )
    except ApiException as exc:
        if exc.status == 404:
            return None, None
        return None, f"{plural}.{group}: {describe_api_error(exc)}"
    except ClusterError as exc:
        return None, f"{plural}.{group}: {exc}"
    items = listed.get("items") if isinstance(listed, Mapping) else None
    return list(items or []), None


def find_node_pod_ranges(
    api: client.ApiClient, nodes: Sequence[NodeCIDRs], timeouts: Timeouts
) -> NodePodRanges:
    """Each node's real pod ranges: Cilium's per-node CIDRs when CiliumNodes hold some, else
    Calico's confirmed block affinities when there are any, else the nodes' ``spec.podCIDRs``
    (``nodes``). An IPAM source that could not be read is named in ``unreadable``."""
    unreadable = []
    for source, group, version, plural, parse in (
        (SOURCE_CILIUM, "cilium.io", "v2", "ciliumnodes", pod_ranges_from_cilium_nodes),
        (
            SOURCE_CALICO,
            "crd.projectcalico.org",
            "v1",
            "blockaffinities",
            pod_ranges_from_block_affinities,
        ),
    ):
        items, refused = _custom_items(api, group, version, plural, timeouts)
        if refused is not None:
            unreadable.append(refused)
        if items:
            try:
                ranges = parse(items)
            except CIDRParseError as exc:
                unreadable.append(f"{plural}.{group}: {exc}")
                continue
            if ranges:
                return NodePodRanges(source, ranges, tuple(unreadable))
    return NodePodRanges(
        SOURCE_NODE, {n.node: n.pod_cidrs for n in nodes if n.pod_cidrs}, tuple(unreadable)
    )
