"""Which IP families a run tests and requires, and which the cluster declares.

A cluster declares a family through its nodes' podCIDRs, the ``default/kubernetes`` Service's
``ipFamilies`` (or its cluster IPs) and its ServiceCIDR objects. Under ``--ip-family auto`` every
declared family is tested and required: a pod or node without an address of it breaks a rule
(``test_required_family_on_every_pod_and_node``, and that family's checks for it fail), never
skips. Families the pods' IPs show (read where no node has a podCIDR) are tested too,
IPv4 when nothing shows. An explicit ``--ip-family`` tests and requires what it names; a declared family it leaves
out is the user's narrowing, which the terminal summary, ``summary.json`` and the HTML report
name. Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from conformance.kit.base.jsondata import JSONData

SOURCE_POD_CIDRS = "node podCIDRs"
SOURCE_KUBERNETES_SERVICE = "the default/kubernetes Service's ipFamilies"
SOURCE_SERVICE_CIDRS = "ServiceCIDR objects"
#: ``--ip-family`` -> the families it tests and requires (``auto``: see `plan_families`).
EXPLICIT_FAMILIES = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}


def family_name(family: int) -> str:
    return f"IPv{family}"


def families_of(texts: Iterable[str]) -> set[int]:
    """The IP versions of addresses or CIDRs (unparsable ones ignored)."""
    found: set[int] = set()
    for text in texts:
        try:
            found.add(ipaddress.ip_network(str(text), strict=False).version)
        except ValueError:
            continue
    return found


def declared_families(
    pod_cidrs: Iterable[str],
    kubernetes_service_families: Iterable[str],
    service_cidrs: Iterable[str],
) -> dict[int, tuple[str, ...]]:
    """Family -> the sources that declare it. ``kubernetes_service_families`` are ``IPv4`` /
    ``IPv6`` as ``spec.ipFamilies`` has them (or the Service's cluster IPs)."""
    declared: dict[int, list[str]] = {}
    service_families = set()
    for text in kubernetes_service_families:
        if text in ("IPv4", "IPv6"):
            service_families.add(int(text[-1]))
        else:
            service_families |= families_of([text])
    for source, families in (
        (SOURCE_POD_CIDRS, families_of(pod_cidrs)),
        (SOURCE_KUBERNETES_SERVICE, service_families),
        (SOURCE_SERVICE_CIDRS, families_of(service_cidrs)),
    ):
        for family in families:
            declared.setdefault(family, []).append(source)
    return {family: tuple(declared[family]) for family in sorted(declared)}


@dataclass(frozen=True)
class FamilyPlan(JSONData):
    """The families a run tests (``tested``) and requires (``required``), what the cluster
    declares (``declared``: family -> sources, keys ``"4"``/``"6"`` as in JSON) and the option
    that chose them."""

    tested: tuple[int, ...] = (4,)
    required: tuple[int, ...] = ()
    declared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    option: str = "auto"
    #: Sources that could not be read (RBAC, ...), with why: what they declare is unknown.
    unread: tuple[str, ...] = ()

    @property
    def narrowed(self) -> tuple[int, ...]:
        """Declared families the run does not test (an explicit ``--ip-family`` left them out)."""
        return tuple(sorted(int(f) for f in self.declared if int(f) not in self.tested))

    def why_required(self, family: int) -> str:
        """``declared by the cluster (node podCIDRs)`` or ``asked by --ip-family dual``."""
        if self.option != "auto":
            return f"asked by --ip-family {self.option}"
        sources = self.declared.get(str(family))
        if sources:
            return f"declared by the cluster ({', '.join(sources)})"
        return "not declared by the cluster"

    def narrowing_lines(self) -> list[str]:
        """One line per declared family the run leaves out, and per source that could not be
        read, for the terminal summary."""
        return [
            f"{family_name(f)} not tested: the cluster declares it "
            f"({', '.join(self.declared[str(f)])}); --ip-family {self.option} leaves it out"
            for f in self.narrowed
        ] + [f"the IP families declared by {why} are unknown" for why in self.unread]

    def describe(self) -> str:
        """``IPv4 and IPv6 (required: declared by the cluster)``, for the summary's line."""
        tested = " and ".join(family_name(f) for f in self.tested)
        if not self.required:
            return f"{tested} (none declared by the cluster: taken from the pods' IPs)"
        why = "declared by the cluster" if self.option == "auto" else f"--ip-family {self.option}"
        if self.required == self.tested:
            return f"{tested} (required: {why})"
        required = " and ".join(family_name(f) for f in self.required)
        return f"{tested} ({required} required: {why}; the rest seen on the pods)"


def plan_families(
    option: str,
    declared: Mapping[int, Sequence[str]],
    observed: Iterable[int] = (),
    unread: Sequence[str] = (),
) -> FamilyPlan:
    """The run's families from ``--ip-family`` (``option``), the declared families and the
    families the pods' IPs show (``observed``); ``unread``: sources that could not be read, and
    why."""
    shown = {str(f): tuple(sources) for f, sources in sorted(declared.items())}
    plan = FamilyPlan(declared=shown, option=option, unread=tuple(unread))
    if option in EXPLICIT_FAMILIES:
        chosen = EXPLICIT_FAMILIES[option]
        return replace(plan, tested=chosen, required=chosen)
    # Tested: what the cluster declares, and what its pods show besides (a CNI with its own
    # IPAM may give pods a family no source declares); required: what it declares.
    tested = tuple(sorted(set(declared) | set(observed))) or (4,)
    return replace(plan, tested=tested, required=tuple(sorted(declared)))
