"""``peer.focus_regex``: a ginkgo focus that selects exactly the upstream specs named, written
literally (brackets, quotes and parentheses in spec names are not regex syntax)."""

from __future__ import annotations

import re

from peer import focus_regex

_TCP = "[sig-network] Netpol NetworkPolicy between server and client"
_UDP = "[sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP"
DENY = f"{_TCP} should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"
UDP_DENY = f"{_UDP} should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"
EGRESS = f"{_TCP} should support denying of egress traffic on the client side (even if the server explicitly allows this traffic) [Feature:NetworkPolicy]"
API = "[sig-network] Netpol API should support creating NetworkPolicy API operations"
SUITE = (
    DENY,
    UDP_DENY,
    EGRESS,
    API,
    f"{_TCP} should support allow-all policy [Feature:NetworkPolicy]",
)


def test_focus_selects_exactly_the_named_specs() -> None:
    focus = re.compile(focus_regex([DENY, EGRESS]))
    assert [name for name in SUITE if focus.search(name)] == [DENY, EGRESS]


def test_focus_of_one_spec_matches_it_alone_not_its_udp_twin() -> None:
    focus = re.compile(focus_regex([UDP_DENY]))
    assert [name for name in SUITE if focus.search(name)] == [UDP_DENY]


def test_focus_escapes_only_what_re2_reads_as_syntax() -> None:
    # Go's RE2 takes a backslash before any punctuation literally; quotes stay as they are.
    assert focus_regex(["a [b] (c) 'd'.e"]) == r"a \[b\] \(c\) 'd'\.e"


def test_focus_is_the_same_whatever_the_order() -> None:
    assert focus_regex([DENY, API]) == focus_regex([API, DENY])
