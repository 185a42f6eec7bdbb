"""Container images from OCI archives, as extra lower layers over the host's files.

A lab's containers see the host's root filesystem (``netlab.dataplane.runtime``). An image
imported with ``netlab up --image ARCHIVE`` adds its own files on top: the archive (an OCI
image layout in a tar, as ``ctr images export`` or ``realk8s/mkimage.py`` write it) is read
once when the lab starts, its layers are unpacked in order into one directory per image
(whiteouts applied between its layers), and a container whose ``image`` names it gets that
directory as the lower layer above the host view. Its config's Entrypoint, Cmd, Env and
WorkingDir apply as containerd's CRI applies them. A container whose image was not imported
runs on the host view alone, as before.

The unpacked images live on a tmpfs of their own at ``<state>/images``: overlayfs refuses a
lower layer that lies inside another lower layer's filesystem tree (the host view is ``/``),
so they cannot sit on the host's disk. The tmpfs goes with the lab (``netlab down`` and the
sweep unmount everything under the state directory); nothing is written outside it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from netlab.dataplane.runtime import mount_points_under, mount_tmpfs, unmount

log = logging.getLogger(__name__)

IMAGES_DIR = "images"  # under the lab's state dir: a tmpfs
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
GZIP_LAYERS = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
PLAIN_LAYERS = ("application/vnd.oci.image.layer.v1.tar",)
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


# What the kubelet asks: the imported image a pod's ``image`` names, or None.
ImageLookup = Callable[[str], "Image | None"]


class ImageError(ValueError):
    """An archive the lab cannot import; the message names the archive and what is wrong."""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config (``config`` of the OCI config blob) a container uses."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""

    @classmethod
    def from_blob(cls, document: Mapping[str, Any]) -> ImageConfig:
        config = document.get("config") or {}
        return cls(
            entrypoint=tuple(str(a) for a in config.get("Entrypoint") or ()),
            cmd=tuple(str(a) for a in config.get("Cmd") or ()),
            env=tuple(str(e) for e in config.get("Env") or ()),
            working_dir=str(config.get("WorkingDir") or ""),
        )


@dataclass(frozen=True)
class Image:
    """An imported image: its names (normalised references), manifest digest, unpacked root."""

    names: tuple[str, ...]
    digest: str
    rootfs: Path
    config: ImageConfig


def normalize_reference(reference: str) -> str:
    """A reference as containerd stores it: ``busybox`` is ``docker.io/library/busybox:latest``;
    a reference with a registry host (a first part with ``.`` or ``:``, or ``localhost``) keeps
    it; no tag and no digest means ``:latest``."""
    name, at, digest = reference.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}"
    parts = name.split("/")
    if parts[0] == "docker.io" and len(parts) == 2:
        name = f"docker.io/library/{parts[1]}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if at else name


def process_args(
    command: Sequence[str], args: Sequence[str], config: ImageConfig
) -> tuple[str, ...]:
    """A container's argv from its spec and its image, as containerd's CRI builds it: without a
    command the image's Entrypoint runs, with the image's Cmd when the spec has no args
    either; a command given replaces both."""
    if command:
        return (*command, *args)
    entrypoint = () if config.entrypoint == ("",) else config.entrypoint
    return (*entrypoint, *(args or config.cmd))


# --- reading an OCI archive --------------------------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    names: tuple[str, ...]
    digest: str
    config: ImageConfig
    layers: tuple[tuple[str, str], ...]  # (digest, media type), bottom first


class _Archive:
    """An OCI image layout inside a tar; blobs read by digest and checked against it."""

    def __init__(self, path: Path, tar: tarfile.TarFile) -> None:
        self.path = path
        self.tar = tar
        self.members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

    def _open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        handle = self.tar.extractfile(member) if member is not None else None
        if handle is None:
            raise ImageError(f"{self.path}: no {name} in the archive")
        return handle

    def json(self, name: str) -> Any:
        try:
            return json.loads(self._open(name).read())
        except ValueError as error:
            raise ImageError(f"{self.path}: {name} is not JSON: {error}") from None

    def blob_path(self, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or not hexdigest:
            raise ImageError(f"{self.path}: unsupported digest {digest!r}")
        return f"blobs/sha256/{hexdigest}"

    def blob(self, digest: str) -> bytes:
        data = self._open(self.blob_path(digest)).read()
        self.verify(digest, hashlib.sha256(data).hexdigest())
        return data

    def verify(self, digest: str, actual: str) -> None:
        if digest != f"sha256:{actual}":
            raise ImageError(f"{self.path}: blob {digest} has digest sha256:{actual}")

    def stream(self, digest: str) -> IO[bytes]:
        return self._open(self.blob_path(digest))

    def manifests(self) -> list[_Manifest]:
        found = []
        for entry in self.json("index.json").get("manifests") or []:
            found.extend(self._resolve(entry, _names(entry)))
        if not found:
            raise ImageError(f"{self.path}: index.json lists no image manifest")
        return found

    def _resolve(self, entry: Mapping[str, Any], names: tuple[str, ...]) -> list[_Manifest]:
        media_type = entry.get("mediaType", MANIFEST_TYPES[0])
        digest = str(entry.get("digest", ""))
        document = json.loads(self.blob(digest))
        if media_type in INDEX_TYPES:
            # A multi-platform index: the linux manifest of this machine's architecture.
            from netlab.api.discovery import go_arch

            for child in document.get("manifests") or []:
                platform = child.get("platform") or {}
                if platform.get("os") == "linux" and platform.get("architecture") == go_arch():
                    return self._resolve(child, names or _names(child))
            return []
        if media_type not in MANIFEST_TYPES:
            raise ImageError(f"{self.path}: unsupported manifest type {media_type}")
        config = ImageConfig.from_blob(json.loads(self.blob(document["config"]["digest"])))
        layers = tuple(
            (str(layer["digest"]), str(layer.get("mediaType", GZIP_LAYERS[0])))
            for layer in document.get("layers") or []
        )
        return [_Manifest(names, digest, config, layers)]


def _names(entry: Mapping[str, Any]) -> tuple[str, ...]:
    annotations = entry.get("annotations") or {}
    names = []
    containerd, oci = (str(annotations.get(key) or "") for key in NAME_ANNOTATIONS)
    if containerd:
        names.append(normalize_reference(containerd))
    # OCI's ref.name is often only a tag; one with a repository path is a full reference.
    if "/" in oci:
        names.append(normalize_reference(oci))
    return tuple(dict.fromkeys(names))


# --- unpacking layers --------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _members(layer: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in layer:
        name = member.name.removeprefix("./").lstrip("/")
        if name in ("", "."):
            continue
        member.name = name
        yield member


def apply_layer(root: Path, layer: IO[bytes]) -> None:
    """Unpack one layer tar onto ``root``: whiteouts remove what lower layers put there (an
    opaque whiteout empties its directory), other entries replace what was there. Extraction
    uses tarfile's ``tar`` filter: no path outside ``root``, no setuid/setgid bits."""
    ours: set[PurePosixPath] = set()  # what this layer put there: whiteouts leave it alone
    with tarfile.open(fileobj=layer, mode="r|") as tar:
        for member in _members(tar):
            path = PurePosixPath(member.name)
            target = root / path
            if path.name == OPAQUE:
                if target.parent.is_dir() and not target.parent.is_symlink():
                    for child in target.parent.iterdir():
                        if path.parent / child.name not in ours:
                            _remove(child)
                continue
            if path.name.startswith(WHITEOUT):
                _remove(target.parent / path.name[len(WHITEOUT) :])
                continue
            replaces_dir = member.isdir() and target.is_dir() and not target.is_symlink()
            if not replaces_dir and (target.is_symlink() or target.exists()):
                _remove(target)
            tar.extract(member, root, filter="tar", numeric_owner=True)
            ours.add(path)


def _unpack(archive: _Archive, manifest: _Manifest, root: Path) -> None:
    for digest, media_type in manifest.layers:
        if media_type not in GZIP_LAYERS + PLAIN_LAYERS:
            raise ImageError(f"{archive.path}: layer {digest} has unsupported type {media_type}")
        hasher = _HashingReader(archive.stream(digest))
        stream = cast(IO[bytes], hasher)
        if media_type in GZIP_LAYERS:
            with gzip.GzipFile(fileobj=stream, mode="rb") as plain:
                apply_layer(root, cast(IO[bytes], plain))
        else:
            apply_layer(root, stream)
        hasher.drain()
        archive.verify(digest, hasher.hexdigest())


class _HashingReader:
    """A read-only stream that hashes what passes through (a layer's digest, checked after)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


# --- the lab's images --------------------------------------------------------------------------


class ImageStore:
    """The images of one lab, unpacked on the lab's own tmpfs at ``<state>/images``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / IMAGES_DIR
        self._images: dict[str, Image] = {}

    def import_archives(self, archives: Sequence[Path]) -> list[Image]:
        """Import every archive (all or nothing: a failure unmounts what was made)."""
        imported: list[Image] = []
        if not archives:
            return imported
        if self.root not in mount_points_under(self.root):
            mount_tmpfs(self.root, mode="0700")
        try:
            for archive in archives:
                imported.extend(self.import_archive(archive))
        except BaseException:
            self.close()
            raise
        return imported

    def import_archive(self, path: Path) -> list[Image]:
        """Unpack every image manifest of one archive; each must carry its name."""
        try:
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
        except (OSError, tarfile.TarError) as error:
            raise ImageError(f"{path}: not a readable image archive: {error}") from None
        images = []
        with tar:
            archive = _Archive(path, tar)
            for manifest in archive.manifests():
                if not manifest.names:
                    raise ImageError(
                        f"{path}: manifest {manifest.digest} has no image name "
                        f"(annotation {NAME_ANNOTATIONS[0]})"
                    )
                image = Image(
                    manifest.names,
                    manifest.digest,
                    self._unpacked(archive, manifest),
                    manifest.config,
                )
                for name in image.names:
                    self._images[name] = image
                images.append(image)
                log.info("image %s imported (%s)", ", ".join(image.names), image.digest)
        return images

    def _unpacked(self, archive: _Archive, manifest: _Manifest) -> Path:
        """The image's root directory, unpacked once per lab (a partial one is redone)."""
        rootfs = self.root / manifest.digest.replace(":", "-") / "rootfs"
        if rootfs.is_dir():
            return rootfs
        partial = rootfs.with_name("rootfs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        os.chmod(partial, 0o755)
        try:
            _unpack(archive, manifest, partial)
        except (OSError, tarfile.TarError, EOFError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise ImageError(f"{archive.path}: a layer could not be unpacked: {error}") from None
        partial.rename(rootfs)
        return rootfs

    def lookup(self, reference: str) -> Image | None:
        """The imported image a pod's ``image`` names, or None (the container runs on the host
        view alone)."""
        if not reference:
            return None
        return self._images.get(normalize_reference(reference))

    @property
    def images(self) -> list[Image]:
        return list(dict.fromkeys(self._images.values()))

    def close(self) -> None:
        self._images.clear()
        unmount(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
