"""netlab sizes the kernel's (global) neighbour table for its labs: raised for many nodes, never
lowered, and left alone for small labs (so a 3-node lab changes nothing on the machine)."""

from __future__ import annotations

from pathlib import Path

from netlab.dataplane.topology import NEIGHBOUR_SYSCTLS, ensure_neighbour_capacity
from netlab.spec import LabSpec


def fake_proc(root: Path, values: tuple[int, int, int], families: tuple[str, ...]) -> None:
    for family in families:
        folder = root / family / "neigh" / "default"
        folder.mkdir(parents=True)
        for name, value in zip(NEIGHBOUR_SYSCTLS, values, strict=True):
            (folder / name).write_text(f"{value}\n")


def read(root: Path, family: str) -> list[int]:
    folder = root / family / "neigh" / "default"
    return [int((folder / name).read_text()) for name in NEIGHBOUR_SYSCTLS]


def test_thirty_nodes_raise_the_kernel_defaults(tmp_path: Path) -> None:
    fake_proc(tmp_path, (128, 512, 1024), ("ipv4", "ipv6"))
    written = ensure_neighbour_capacity(LabSpec(nodes=30), root=tmp_path)
    assert read(tmp_path, "ipv4") == read(tmp_path, "ipv6") == [960, 3840, 7680]
    assert written["ipv4.gc_thresh3"] == 7680


def test_small_labs_and_higher_settings_are_left_alone(tmp_path: Path) -> None:
    fake_proc(tmp_path, (128, 512, 1024), ("ipv4",))  # and no IPv6 on this kernel
    assert ensure_neighbour_capacity(LabSpec(nodes=3), root=tmp_path) == {}
    assert read(tmp_path, "ipv4") == [128, 512, 1024]
    (tmp_path / "ipv4" / "neigh" / "default" / "gc_thresh3").write_text("100000\n")
    ensure_neighbour_capacity(LabSpec(nodes=30), root=tmp_path)
    assert read(tmp_path, "ipv4") == [960, 3840, 100000]  # raised where lower, never lowered
