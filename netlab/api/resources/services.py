"""Services as kube-apiserver serves them: defaults, validation, ClusterIP and NodePort
allocation, with the real server's 422 messages.

What is allocated is read from the stored Services themselves (every ``spec.clusterIPs`` and
``spec.ports[].nodePort`` of the store), so deleting a Service, or a namespace, frees its
addresses and ports, and a ``dryRun`` create (never stored) allocates nothing, as the real
server's dry-run allocators do. The event loop serialises writes, so a check and the store
write that follows it cannot interleave with another request.

Allocation follows kube-apiserver's bitmap allocators: a dynamic address or port is picked
at random from the upper band of the range first, leaving the lower band (16..256 addresses,
16..128 ports) to Services that ask for a fixed one, such as kube-dns at the tenth address.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from netlab.api.controllers.bootstrap import Bootstrap
from netlab.api.errors import (
    ApiError,
    field_cause,
    field_not_supported,
    invalid,
)
from netlab.api.resources.strategy import Strategy
from netlab.api.store import Store
from netlab.contract import JSONDict
from netlab.spec import LabSpec, ip_version

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NODE_PORT_RANGE = (30000, 32767)  # kube-apiserver's --service-node-port-range default
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
TRAFFIC_POLICIES = ("Cluster", "Local")
CLUSTER_IP_NONE = "None"
_VALID_IP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
_PORT_NUMBER = "must be between 1 and 65535, inclusive"


def family_name(version: int) -> str:
    return f"IPv{version}"


def go_string_slice(values: Iterable[str]) -> str:
    """A []string as Go's %#v prints it in field errors: []string{"a", "b"}."""
    return "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"


def is_headless(service: JSONDict) -> bool:
    return (service.get("spec") or {}).get("clusterIP") == CLUSTER_IP_NONE


def service_ip_set(service: JSONDict) -> bool:
    """v1helper.IsServiceIPSet: a ClusterIP that is neither empty nor None."""
    cluster_ip = (service.get("spec") or {}).get("clusterIP")
    return bool(cluster_ip) and cluster_ip != CLUSTER_IP_NONE


def needs_node_ports(service: JSONDict) -> bool:
    return (service.get("spec") or {}).get("type") in ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class Band:
    """One allocator's range: the static (lower) band is offered last to dynamic requests."""

    first: int
    last: int  # inclusive
    static_size: int

    def candidates(self, rng: random.Random) -> Iterable[int]:
        """Every value of the range once: the upper band in random order, then the lower."""
        boundary = self.first + self.static_size
        for low, high in ((boundary, self.last), (self.first, boundary - 1)):
            if high < low:
                continue
            start = rng.randint(low, high)
            yield from range(start, high + 1)
            yield from range(low, start)


def ip_band(network: IPNetwork) -> Band:
    """The usable addresses of a service range: not the network address, and for IPv4 not
    the broadcast address; the static band is min(max(16, size/16), 256) addresses."""
    first = int(network.network_address) + 1
    last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
    size = last - first + 1
    return Band(first, last, min(max(16, size // 16), 256))


def node_port_band() -> Band:
    low, high = NODE_PORT_RANGE
    size = high - low + 1
    return Band(low, high, min(max(16, size // 32), 128))


class ServiceRegistry:
    """Create and update logic for Services; see the module docstring."""

    def __init__(self, store: Store, spec: LabSpec, rng: random.Random | None = None) -> None:
        self.store = store
        self.ranges: dict[str, IPNetwork] = {
            family_name(ipaddress.ip_network(cidr).version): ipaddress.ip_network(cidr)
            for cidr in spec.service_cidrs
        }
        self.default_family = family_name(ipaddress.ip_network(spec.service_cidrs[0]).version)
        self.rng = rng or random.Random()

    # --- what is taken ----------------------------------------------------------------------

    def _stored_specs(self, skip: tuple[str, str] | None) -> Iterator[JSONDict]:
        """The spec of every stored Service but ``skip`` (namespace, name): what holds the
        allocated addresses and ports."""
        for service in self.store.list("services"):
            meta = service["metadata"]
            if skip != (meta.get("namespace", ""), meta["name"]):
                yield service.get("spec") or {}

    def _allocated_ips(self, skip: tuple[str, str] | None = None) -> set[str]:
        return {
            str(ipaddress.ip_address(address))
            for spec in self._stored_specs(skip)
            for address in spec.get("clusterIPs") or []
            if ip_version(address)
        }

    def _allocated_node_ports(self, skip: tuple[str, str] | None = None) -> set[int]:
        return {
            int(port["nodePort"])
            for spec in self._stored_specs(skip)
            for port in spec.get("ports") or []
            if port.get("nodePort")
        }

    # --- create and update ------------------------------------------------------------------

    def create(self, service: JSONDict) -> JSONDict:
        """Defaults, validation and allocation for a new Service (422 Invalid otherwise)."""
        service = copy.deepcopy(service)
        name = str(service["metadata"].get("name", ""))
        spec = service.setdefault("spec", {})
        apply_defaults(spec)
        causes = validate_spec(spec)
        if causes:
            raise invalid("Service", name, causes)
        if spec["type"] != "ExternalName":
            self._init_ip_families(name, spec, None)
            self._allocate_cluster_ips(name, spec, skip=None)
        self._allocate_node_ports(name, spec, None)
        service.setdefault("status", {"loadBalancer": {}})
        return service

    def update(self, service: JSONDict, existing: JSONDict) -> JSONDict:
        """An update (PUT or PATCH) of ``existing``: allocated values the client left out are
        kept, cluster IPs may not change, NodePorts follow the type."""
        service = copy.deepcopy(service)
        name = str(existing["metadata"]["name"])
        place = (str(existing["metadata"].get("namespace", "")), name)
        old = existing.get("spec") or {}
        spec = service.setdefault("spec", {})
        apply_defaults(spec)
        _drop_type_dependent_fields(spec, old)
        self._keep_allocated(spec, old)
        causes = validate_spec(spec)
        if causes:
            raise invalid("Service", name, causes)
        causes = _immutable_cluster_ips(spec, old)
        if causes:
            raise invalid("Service", name, causes)
        if spec["type"] == "ExternalName":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
        else:
            self._init_ip_families(name, spec, old)
            self._allocate_cluster_ips(name, spec, skip=place)
        self._allocate_node_ports(name, spec, old, skip=place)
        return service

    @staticmethod
    def _keep_allocated(spec: JSONDict, old: JSONDict) -> None:
        """patchAllocatedValues: an update that leaves out clusterIP(s) or nodePorts keeps
        the allocated ones (when the type still uses them)."""
        uses_ips = "ExternalName" not in (spec.get("type"), old.get("type"))
        if uses_ips and not spec.get("clusterIP") and not spec.get("clusterIPs"):
            for key in ("clusterIP", "clusterIPs"):
                if key in old:
                    spec[key] = copy.deepcopy(old[key])
        if needs_node_ports({"spec": spec}) and needs_node_ports({"spec": old}):
            old_ports = {
                (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                for p in old.get("ports") or []
            }
            for port in spec.get("ports") or []:
                if not port.get("nodePort"):
                    kept = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                    if kept:
                        port["nodePort"] = kept

    def _init_ip_families(self, name: str, spec: JSONDict, old: JSONDict | None) -> None:
        """initIPFamilyFields: default ipFamilyPolicy and ipFamilies from the cluster and the
        given clusterIPs, refusing families the cluster does not have."""
        headless_selectorless = spec.get("clusterIP") == CLUSTER_IP_NONE and not spec.get(
            "selector"
        )
        if "ipFamilyPolicy" not in spec:
            if old is not None and old.get("ipFamilyPolicy"):
                spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
            elif headless_selectorless:
                spec["ipFamilyPolicy"] = "RequireDualStack"
            else:
                spec["ipFamilyPolicy"] = "SingleStack"
        policy = spec["ipFamilyPolicy"]
        families: list[str] = list(spec.get("ipFamilies") or [])
        cluster_ips: list[str] = list(spec.get("clusterIPs") or [])
        causes: list[JSONDict] = []
        if policy == "SingleStack":
            if len(cluster_ips) == 2:
                causes.append(
                    field_cause(
                        "spec.ipFamilyPolicy",
                        f"Invalid value: {json.dumps(policy)}: must be 'RequireDualStack' or "
                        "'PreferDualStack' when multiple cluster IPs are specified",
                    )
                )
            if len(families) == 2:
                causes.append(
                    field_cause(
                        "spec.ipFamilyPolicy",
                        f"Invalid value: {json.dumps(policy)}: must be 'RequireDualStack' or "
                        "'PreferDualStack' when multiple IP families are specified",
                    )
                )
        for index, address in enumerate(cluster_ips):
            if address == CLUSTER_IP_NONE:
                break
            family = family_name(ip_version(address) or 4)
            if index >= len(families):
                if family not in self.ranges:
                    causes.append(
                        field_cause(
                            f"spec.clusterIPs[{index}]",
                            f"Invalid value: {go_string_slice(cluster_ips)}: "
                            f"{family} is not configured on this cluster",
                        )
                    )
                else:
                    families.append(family)
        if causes:
            raise invalid("Service", name, causes)
        if headless_selectorless:
            families = families or [self.default_family]
            if len(families) < 2 and policy != "SingleStack":
                families.append("IPv6" if families[0] == "IPv4" else "IPv4")
            spec["ipFamilies"] = families
            return
        if policy == "RequireDualStack" and len(self.ranges) < 2:
            causes.append(
                field_cause(
                    "spec.ipFamilyPolicy",
                    f"Invalid value: {json.dumps(policy)}: "
                    "this cluster is not configured for dual-stack services",
                )
            )
        for index, family in enumerate(families):
            if family not in self.ranges:
                causes.append(
                    field_cause(
                        f"spec.ipFamilies[{index}]",
                        f"Invalid value: {json.dumps(family)}: not configured on this cluster",
                    )
                )
        if causes:
            raise invalid("Service", name, causes)
        families = families or [self.default_family]
        if policy != "SingleStack" and len(families) == 1 and len(self.ranges) == 2:
            families.append("IPv6" if families[0] == "IPv4" else "IPv4")
        if policy == "SingleStack":
            families = families[:1]
        spec["ipFamilies"] = families

    def _allocate_cluster_ips(
        self, name: str, spec: JSONDict, *, skip: tuple[str, str] | None
    ) -> None:
        """One cluster IP per family: the asked-for one if free and in range, else the next
        free one; headless Services get ``None``."""
        if spec.get("clusterIP") == CLUSTER_IP_NONE:
            spec["clusterIPs"] = [CLUSTER_IP_NONE]
            return
        families: list[str] = spec["ipFamilies"]
        wanted: list[str] = list(spec.get("clusterIPs") or [])
        if spec.get("clusterIP") and not wanted:
            wanted = [spec["clusterIP"]]
        wanted = wanted[: len(families)]
        taken = self._allocated_ips(skip)
        old_ips: set[str] = set()
        if skip is not None:
            existing = self.store.get("services", *skip)
            old_ips = set(((existing or {}).get("spec") or {}).get("clusterIPs") or [])
        result: list[str] = []
        for index, family in enumerate(families):
            network = self.ranges[family]
            asked = wanted[index] if index < len(wanted) else ""
            if asked:
                if asked in old_ips:
                    result.append(asked)
                    continue
                address = ipaddress.ip_address(asked)
                band = ip_band(network)
                if not band.first <= int(address) <= band.last:
                    problem = (
                        f"the provided IP ({address}) is not in the valid range. "
                        f"The range of valid IPs is {network}"
                    )
                elif str(address) in taken:
                    problem = "provided IP is already allocated"
                else:
                    result.append(str(address))
                    taken.add(str(address))
                    continue
                listed = go_string_slice(spec.get("clusterIPs") or wanted)
                raise invalid(
                    "Service",
                    name,
                    [
                        field_cause(
                            "spec.clusterIPs",
                            f"Invalid value: {listed}: failed to allocate IP {asked}: {problem}",
                        )
                    ],
                )
            result.append(self._next_ip(network, taken))
            taken.add(result[-1])
        spec["clusterIPs"] = result
        spec["clusterIP"] = result[0]

    def _next_ip(self, network: IPNetwork, taken: set[str]) -> str:
        for value in ip_band(network).candidates(self.rng):
            address = str(ipaddress.ip_address(value))
            if address not in taken:
                return address
        raise ApiError(
            500, "Internal error occurred: failed to allocate a serviceIP: range is full"
        )

    def _allocate_node_ports(
        self,
        name: str,
        spec: JSONDict,
        old: JSONDict | None,
        *,
        skip: tuple[str, str] | None = None,
    ) -> None:
        """initNodePorts / updateNodePorts: a NodePort per port of NodePort and LoadBalancer
        Services (ports with the same number share one), released when the type changes."""
        ports = spec.get("ports") or []
        if not needs_node_ports({"spec": spec}):
            for port in ports:
                port.pop("nodePort", None)
            return
        taken = self._allocated_node_ports(skip)
        mine = {int(p["nodePort"]) for p in (old or {}).get("ports") or [] if p.get("nodePort")}
        band = node_port_band()
        by_service_port: dict[int, int] = {}
        for index, port in enumerate(ports):
            requested = port.get("nodePort")
            if not requested:
                shared = by_service_port.get(int(port["port"]))
                if shared is None:
                    shared = next((n for n in band.candidates(self.rng) if n not in taken), None)
                    if shared is None:
                        raise ApiError(
                            500,
                            "Internal error occurred: failed to allocate a nodePort: range is full",
                        )
                    taken.add(shared)
                port["nodePort"] = shared
                by_service_port[int(port["port"])] = shared
                continue
            requested = int(requested)
            if requested in mine or by_service_port.get(int(port["port"])) == requested:
                by_service_port[int(port["port"])] = requested
                continue
            if not band.first <= requested <= band.last:
                problem = (
                    "provided port is not in the valid range. The range of valid ports is "
                    f"{band.first}-{band.last}"
                )
            elif requested in taken:
                problem = "provided port is already allocated"
            else:
                taken.add(requested)
                by_service_port[int(port["port"])] = requested
                continue
            raise invalid(
                "Service",
                name,
                [
                    field_cause(
                        f"spec.ports[{index}].nodePort", f"Invalid value: {requested}: {problem}"
                    )
                ],
            )


def _drop_type_dependent_fields(spec: JSONDict, old: JSONDict) -> None:
    """dropTypeDependentFields: a type change away from NodePort/LoadBalancer clears the
    nodePorts the client left as they were (and the traffic policy only they use)."""
    if needs_node_ports({"spec": old}) and not needs_node_ports({"spec": spec}):
        old_ports = {p.get("nodePort") for p in old.get("ports") or []}
        for port in spec.get("ports") or []:
            if port.get("nodePort") in old_ports:
                port.pop("nodePort", None)
        if spec.get("externalTrafficPolicy") == old.get("externalTrafficPolicy"):
            spec.pop("externalTrafficPolicy", None)


def apply_defaults(spec: JSONDict) -> None:
    """SetDefaults_Service and the ServicePort defaults, as the API server fills them."""
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if spec.get("clusterIP") == "" and not spec.get("clusterIPs"):
        spec.pop("clusterIP")
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]  # the v1 conversion fills one from the other
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")


def _port_name_problems(name: str) -> list[str]:
    """validation.IsValidPortName for a targetPort given by name."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not all(c.islower() or c.isdigit() or c == "-" for c in name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not any(c.isalpha() for c in name):
        problems.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-") or "--" in name:
        problems.append("must not begin or end with a hyphen and hyphens can not be adjacent")
    return problems


def validate_spec(spec: JSONDict) -> list[JSONDict]:
    """ValidateService's checks of the spec that the JSON schema cannot make."""
    causes: list[JSONDict] = []
    service_type = spec.get("type")
    if service_type not in SERVICE_TYPES:
        causes.append(field_not_supported("spec.type", service_type, SERVICE_TYPES))
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == CLUSTER_IP_NONE
    if not ports and not headless and service_type != "ExternalName":
        causes.append(field_cause("spec.ports", "Required value", "FieldValueRequired"))
    if service_type == "ExternalName" and not spec.get("externalName"):
        causes.append(field_cause("spec.externalName", "Required value", "FieldValueRequired"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        where = f"spec.ports[{index}]"
        name = str(port.get("name") or "")
        if len(ports) > 1 and not name:
            causes.append(field_cause(f"{where}.name", "Required value", "FieldValueRequired"))
        elif name in names:
            causes.append(
                field_cause(
                    f"{where}.name", f"Duplicate value: {json.dumps(name)}", "FieldValueDuplicate"
                )
            )
        names.add(name)
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(field_cause(f"{where}.port", f"Invalid value: {number}: {_PORT_NUMBER}"))
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            causes.append(field_not_supported(f"{where}.protocol", protocol, PROTOCOLS))
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            causes.append(
                field_cause(f"{where}.targetPort", f"Invalid value: {target}: {_PORT_NUMBER}")
            )
        elif isinstance(target, str):
            for problem in _port_name_problems(target):
                causes.append(
                    field_cause(
                        f"{where}.targetPort", f"Invalid value: {json.dumps(target)}: {problem}"
                    )
                )
        if port.get("nodePort") and service_type == "ClusterIP":
            causes.append(
                field_cause(
                    f"{where}.nodePort",
                    "Forbidden: may not be used when `type` is 'ClusterIP'",
                    "FieldValueForbidden",
                )
            )
    for key, allowed in (
        ("ipFamilyPolicy", FAMILY_POLICIES),
        ("externalTrafficPolicy", TRAFFIC_POLICIES),
        ("internalTrafficPolicy", TRAFFIC_POLICIES),
    ):
        if key in spec and spec[key] not in allowed:
            causes.append(field_not_supported(f"spec.{key}", spec[key], allowed))
    if spec.get("sessionAffinity") not in ("None", "ClientIP"):
        causes.append(
            field_not_supported(
                "spec.sessionAffinity", spec.get("sessionAffinity"), ("ClientIP", "None")
            )
        )
    for index, family in enumerate(spec.get("ipFamilies") or []):
        if family not in ("IPv4", "IPv6"):
            causes.append(
                field_not_supported(f"spec.ipFamilies[{index}]", family, ("IPv4", "IPv6"))
            )
    causes += _cluster_ip_causes(spec)
    return causes


def _cluster_ip_causes(spec: JSONDict) -> list[JSONDict]:
    """ValidateServiceClusterIPsRelatedFields: well-formed IPs, clusterIP == clusterIPs[0],
    at most one per family, each matching its ipFamilies entry."""
    causes: list[JSONDict] = []
    cluster_ips: list[str] = list(spec.get("clusterIPs") or [])
    primary = spec.get("clusterIP")
    if primary and cluster_ips and primary != cluster_ips[0]:
        causes.append(
            field_cause(
                "spec.clusterIPs",
                f"Invalid value: {go_string_slice(cluster_ips)}: "
                "first value must match `clusterIP`",
            )
        )
    if len(cluster_ips) > 2:
        causes.append(
            field_cause(
                "spec.clusterIPs",
                f"Invalid value: {go_string_slice(cluster_ips)}: may only hold up to 2 values",
            )
        )
    if spec.get("type") == "ExternalName" and (primary or cluster_ips):
        causes.append(
            field_cause(
                "spec.clusterIPs",
                "Forbidden: may not be set for ExternalName services",
                "FieldValueForbidden",
            )
        )
    versions: list[int] = []
    for index, address in enumerate(cluster_ips):
        if index == 0 and address == CLUSTER_IP_NONE:
            continue
        version = ip_version(address)
        if version is None:
            causes.append(
                field_cause(
                    f"spec.clusterIPs[{index}]",
                    f"Invalid value: {json.dumps(address)}: {_VALID_IP}",
                )
            )
            continue
        versions.append(version)
    if len(versions) == 2 and versions[0] == versions[1]:
        causes.append(
            field_cause(
                "spec.clusterIPs[1]",
                f"Invalid value: {go_string_slice(cluster_ips)}: "
                "may specify no more than one IP for each IP family",
            )
        )
    families = list(spec.get("ipFamilies") or [])
    if primary != CLUSTER_IP_NONE:
        for index, address in enumerate(cluster_ips[: len(families)]):
            version = ip_version(address)
            if version is not None and family_name(version) != families[index]:
                causes.append(
                    field_cause(
                        f"spec.clusterIPs[{index}]",
                        f"Invalid value: {json.dumps(address)}: expected an {families[index]} "
                        f"value as indicated by `ipFamilies[{index}]`",
                    )
                )
    return causes


def _immutable_cluster_ips(spec: JSONDict, old: JSONDict) -> list[JSONDict]:
    """validateUpgradeDowngradeClusterIPs, for the common case: the IPs a Service has may
    not change (adding or dropping the secondary family is allowed)."""
    if "ExternalName" in (spec.get("type"), old.get("type")):
        return []
    new_ips: list[str] = list(spec.get("clusterIPs") or [])
    old_ips: list[str] = list(old.get("clusterIPs") or [])
    if not new_ips:
        return []
    for index, address in enumerate(old_ips[: len(new_ips)]):
        if address != new_ips[index]:
            return [
                field_cause(
                    f"spec.clusterIPs[{index}]",
                    f"Invalid value: {go_string_slice(new_ips)}: may not change once set",
                )
            ]
    return []


class ServiceStrategy(Strategy):
    """Services: defaults, validation and allocation by the ``ServiceRegistry``; a deleted
    ``default/kubernetes`` is put back by the bootstrap controller."""

    returns_deleted_object = True

    def __init__(self, registry: ServiceRegistry, bootstrap: Bootstrap) -> None:
        self.registry = registry
        self.bootstrap = bootstrap

    def prepare_for_create(self, obj: JSONDict) -> JSONDict:
        return self.registry.create(obj)

    def validate_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        return self.registry.update(obj, existing)

    def after_delete(self, namespace: str, name: str) -> None:
        self.bootstrap.service_removed(namespace, name)
