"""netlab.dataplane.images: OCI archives read and unpacked as containerd would lay them out
(layers in order, whiteouts and opaque directories applied, digests checked, nothing outside the
image's root), references normalised, and argv built as containerd's CRI builds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from oci import layer, oci_archive

from netlab.dataplane.images import (
    ImageConfig,
    ImageError,
    ImageStore,
    normalize_reference,
    process_args,
)

NAME = "registry.k8s.io/e2e-test-images/agnhost:2.45"


LOWER = layer(
    [
        ("etc", None, None),
        ("etc/gone", b"whited out above", None),
        ("etc/kept", b"kept", None),
        ("dir", None, None),
        ("dir/old", b"hidden by the opaque whiteout", None),
        ("link", None, "/etc/kept"),
        ("agnhost", b"#!/bin/sh\n", None),
    ]
)
UPPER = layer(
    [
        ("etc/.wh.gone", b"", None),
        ("dir/new", b"new", None),
        ("dir/.wh..wh..opq", b"", None),
        ("link", b"a file now", None),
    ]
)


def test_layers_apply_in_order_with_whiteouts(tmp_path: Path) -> None:
    archive = oci_archive(
        tmp_path / "image.tar",
        [LOWER, UPPER],
        name=NAME,
        config={"Entrypoint": ["/agnhost"], "Cmd": ["pause"], "Env": ["A=1"], "WorkingDir": "/w"},
    )
    store = ImageStore(tmp_path / "state")
    (image,) = store.import_archive(archive)
    root = image.rootfs
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["kept"]
    assert sorted(p.name for p in (root / "dir").iterdir()) == ["new"], "opaque: only this layer's"
    assert not (root / "link").is_symlink()
    assert (root / "link").read_bytes() == b"a file now"
    assert image.config == ImageConfig(("/agnhost",), ("pause",), ("A=1",), "/w")
    assert store.lookup(NAME) is image
    assert store.lookup("registry.k8s.io/e2e-test-images/agnhost:2.46") is None
    assert store.lookup("") is None


def test_a_symlink_never_leads_a_later_layer_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    escape = layer([("escape", None, str(outside))])
    through = layer([("escape/planted", b"x", None)])
    with pytest.raises(ImageError, match="could not be unpacked"):
        ImageStore(tmp_path / "state").import_archive(
            oci_archive(tmp_path / "image.tar", [escape, through], name=NAME)
        )
    assert list(outside.iterdir()) == []


def test_a_member_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="could not be unpacked"):
        ImageStore(tmp_path / "state").import_archive(
            oci_archive(tmp_path / "image.tar", [layer([("../evil", b"x", None)])], name=NAME)
        )
    assert not (tmp_path / "state" / "evil").exists()


def test_a_tampered_layer_and_a_nameless_image_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="has digest"):
        ImageStore(tmp_path / "a").import_archive(
            oci_archive(tmp_path / "bad.tar", [LOWER], name=NAME, corrupt=True)
        )
    with pytest.raises(ImageError, match="has no image name"):
        ImageStore(tmp_path / "b").import_archive(
            oci_archive(tmp_path / "anon.tar", [LOWER], name=None)
        )
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ImageError, match="not a readable image archive"):
        ImageStore(tmp_path / "c").import_archive(tmp_path / "junk.tar")


@pytest.mark.parametrize(
    ("reference", "normal"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("nicolaka/netshoot:v0.13", "docker.io/nicolaka/netshoot:v0.13"),
        (NAME, NAME),
        ("localhost/x", "localhost/x:latest"),
        ("registry:5000/x", "registry:5000/x:latest"),
        ("x@sha256:abc", "docker.io/library/x@sha256:abc"),
    ],
)
def test_references_normalise_as_containerd_stores_them(reference: str, normal: str) -> None:
    assert normalize_reference(reference) == normal


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        ((), (), ("/agnhost", "pause")),  # the image's Entrypoint and Cmd
        ((), ("netexec", "--http-port=8083"), ("/agnhost", "netexec", "--http-port=8083")),
        (("sh", "-c"), (), ("sh", "-c")),  # a command replaces Entrypoint and Cmd
        (("sh",), ("-c", "true"), ("sh", "-c", "true")),
    ],
)
def test_argv_as_containerd_builds_it(
    command: tuple[str, ...], args: tuple[str, ...], argv: tuple[str, ...]
) -> None:
    config = ImageConfig(entrypoint=("/agnhost",), cmd=("pause",))
    assert process_args(command, args, config) == argv
    assert process_args((), (), ImageConfig()) == ()
