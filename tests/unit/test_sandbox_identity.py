"""The sandbox check compares the sandbox itself (`conformance.kit.exchanges.sandboxes.sandbox_changes`):
the IPs, the restarted container's network namespace (by the kernel's cookie where there is
one, else the inode), the two containers sharing it, and the other container's restart count.
A runtime that makes a new namespace on a container restart and gets the same IP back is caught;
namespaces that were not read are could-not-test, never a pass."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.exchanges.sandboxes import NetnsId, SandboxRestart, sandbox_changes

OLD = NetnsId("net:[4026532001]", 4351)
KEPT = SandboxRestart(
    node="n1",
    pod="sandbox-n1",
    ips_before=("10.244.1.5",),
    ips_after=("10.244.1.5",),
    netns_before=OLD,
    netns_after=OLD,
    survivor_netns=OLD,
    restarts_before={"a": 0, "b": 0},
    restarts_after={"a": 0, "b": 1},
)


def test_the_same_sandbox_shows_no_change() -> None:
    assert sandbox_changes(KEPT) == []


def test_a_new_namespace_with_the_same_ip_is_caught() -> None:
    new = NetnsId("net:[4026532077]", 4402)
    # As kubelet does for a new sandbox: both containers restarted into it.
    restart = replace(KEPT, netns_after=new, survivor_netns=new, restarts_after={"a": 1, "b": 1})
    found = sandbox_changes(restart)
    assert len(found) == 2
    assert found[0].startswith("container b came back in another network namespace")
    assert "net:[4026532001] (cookie 4351) before, net:[4026532077] (cookie 4402) after" in found[0]
    assert found[1].startswith("container a restarted too (restart count 0 -> 1)")


def test_the_cookie_decides_where_the_kernel_reused_the_inode() -> None:
    reused = NetnsId(OLD.inode, 4402)
    assert OLD.same(reused) is False
    assert NetnsId("net:[1]").same(NetnsId("net:[1]")) is True  # no cookie: the inode
    assert NetnsId("net:[1]").same(NetnsId("net:[2]", 7)) is False
    assert NetnsId().same(OLD) is None
    assert len(sandbox_changes(replace(KEPT, netns_after=reused, survivor_netns=reused))) == 1


def test_containers_apart_and_changed_ips_are_named() -> None:
    apart = NetnsId("net:[4026532099]", 4500)
    found = sandbox_changes(replace(KEPT, survivor_netns=apart, ips_after=("10.244.1.9",)))
    assert found[0] == "pod IPs changed from ['10.244.1.5'] to ['10.244.1.9']"
    assert found[1].startswith("containers a and b are in different network namespaces")


def test_namespaces_not_read_could_not_test() -> None:
    with pytest.raises(CouldNotTest, match="were not read"):
        sandbox_changes(replace(KEPT, survivor_netns=None))
    with pytest.raises(CouldNotTest, match="named no network namespace"):
        sandbox_changes(replace(KEPT, netns_before=NetnsId(), netns_after=NetnsId()))


def test_the_identity_travels_with_the_record() -> None:
    assert SandboxRestart.from_dict(KEPT.to_dict()) == KEPT
    assert NetnsId.from_info({"netns": "net:[5]", "netns_cookie": 9}) == NetnsId("net:[5]", 9)
    assert NetnsId.from_info({"netns": None}) == NetnsId()
