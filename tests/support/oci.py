"""OCI image archives for tests: gzipped layers and an OCI image layout in a tar, as
``ctr images export`` and realk8s/mkimage.py write them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def layer(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """A gzipped layer: (path, file content or None for a directory, symlink target)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path, content, link in entries:
            info = tarfile.TarInfo(path)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def oci_archive(
    path: Path,
    layers: list[bytes],
    *,
    name: str | None,
    config: dict[str, object] | None = None,
    corrupt: bool = False,
) -> Path:
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    config_blob = blob(json.dumps({"config": config or {}}).encode())
    layer_refs = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer)}
        for layer in layers
    ]
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
                "layers": layer_refs,
            }
        ).encode()
    )
    annotations = {"io.containerd.image.name": name} if name else {}
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": annotations,
            }
        ],
    }
    if corrupt:  # the last layer's bytes no longer match its digest
        digest = str(layer_refs[-1]["digest"])
        blobs[digest] = layer([("tampered", b"x", None)])
    with tarfile.open(path, "w") as tar:
        for member, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
            *((f"blobs/sha256/{d.removeprefix('sha256:')}", b) for d, b in blobs.items()),
        ]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
