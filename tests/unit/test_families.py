"""`conformance.kit.cluster.families`: a family the cluster declares is required under
``--ip-family auto``; an explicit ``--ip-family`` narrows on purpose and says so."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.cluster.families import (
    SOURCE_KUBERNETES_SERVICE,
    SOURCE_POD_CIDRS,
    SOURCE_SERVICE_CIDRS,
    FamilyPlan,
    declared_families,
    plan_families,
)

DUAL_NODES = ("10.244.1.0/24", "fd00:10:244:1::/64")


def test_every_source_declares() -> None:
    assert declared_families(DUAL_NODES, ("IPv4",), ()) == {
        4: (SOURCE_POD_CIDRS, SOURCE_KUBERNETES_SERVICE),
        6: (SOURCE_POD_CIDRS,),
    }
    # No podCIDRs (the CNI's own IPAM): the Service and the ServiceCIDRs still declare.
    assert declared_families((), ("IPv6",), ("10.96.0.0/16", "fd00:10:96::/112")) == {
        4: (SOURCE_SERVICE_CIDRS,),
        6: (SOURCE_KUBERNETES_SERVICE, SOURCE_SERVICE_CIDRS),
    }
    # A Service from before ipFamilies: its cluster IPs say.
    assert declared_families((), ("10.96.0.1",), ()) == {4: (SOURCE_KUBERNETES_SERVICE,)}
    assert declared_families(("not a cidr",), (), ()) == {}


def test_auto_requires_every_declared_family() -> None:
    plan = plan_families("auto", declared_families(DUAL_NODES, ("IPv4",), ()), observed=(4,))
    assert (plan.tested, plan.required, plan.narrowed) == ((4, 6), (4, 6), ())
    assert plan.why_required(6) == f"declared by the cluster ({SOURCE_POD_CIDRS})"
    assert plan.narrowing_lines() == []


def test_auto_tests_what_the_pods_show_and_requires_what_is_declared() -> None:
    assert plan_families("auto", {}, observed=(6,)) == FamilyPlan(tested=(6,), required=())
    assert plan_families("auto", {}, observed=()).tested == (4,)
    assert plan_families("auto", {}, observed=(6,)).why_required(6) == "not declared by the cluster"
    # A CNI with its own IPAM gives pods IPv6 where only the IPv4 Service declares a family.
    mixed = plan_families("auto", declared_families((), ("IPv4",), ()), observed=(4, 6))
    assert (mixed.tested, mixed.required) == ((4, 6), (4,))
    assert mixed.describe() == (
        "IPv4 and IPv6 (IPv4 required: declared by the cluster; the rest seen on the pods)"
    )


def test_an_explicit_family_narrows_and_says_so() -> None:
    plan = plan_families("ipv4", declared_families(DUAL_NODES, ("IPv4",), ()))
    assert (plan.tested, plan.required, plan.narrowed) == ((4,), (4,), (6,))
    assert plan.narrowing_lines() == [
        f"IPv6 not tested: the cluster declares it ({SOURCE_POD_CIDRS}); --ip-family ipv4 "
        "leaves it out"
    ]
    assert plan.why_required(4) == "asked by --ip-family ipv4"
    # Asking for more than the cluster declares narrows nothing: the extra family is required.
    dual = plan_families("dual", {4: (SOURCE_POD_CIDRS,)})
    assert (dual.tested, dual.required, dual.narrowed) == ((4, 6), (4, 6), ())


def test_the_plan_travels_as_json() -> None:
    plan = plan_families("ipv6", declared_families(DUAL_NODES, (), ()))
    assert FamilyPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@given(
    st.sampled_from(("auto", "ipv4", "ipv6", "dual")),
    st.sets(st.sampled_from((4, 6))),
    st.sets(st.sampled_from((4, 6))),
)
def test_declared_families_are_tested_or_named_as_narrowed(
    option: str, declared: set[int], observed: set[int]
) -> None:
    plan = plan_families(option, {f: ("x",) for f in declared}, observed)
    assert set(plan.tested) | set(plan.narrowed) >= declared
    assert not set(plan.tested) & set(plan.narrowed)
    assert set(plan.required) <= set(plan.tested)
    if option == "auto":
        assert plan.narrowed == ()
        assert set(plan.required) == declared


def test_a_source_that_could_not_be_read_is_named_not_fatal() -> None:
    unread = (f"{SOURCE_SERVICE_CIDRS} (list servicecidrs failed: HTTP 403 Forbidden)",)
    plan = plan_families("auto", declared_families(DUAL_NODES, (), ()), unread=unread)
    assert plan.tested == (4, 6)
    assert plan.narrowing_lines() == [
        f"the IP families declared by {SOURCE_SERVICE_CIDRS} (list servicecidrs failed: HTTP 403 "
        "Forbidden) are unknown"
    ]
