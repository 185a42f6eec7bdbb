"""Files, read and written only inside the agent's ``--data-dir`` directories."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from typing import TYPE_CHECKING, Any

from .protocol import FILE_CHUNK, RequestError, brief, iter_deterministic_chunks

if TYPE_CHECKING:
    from collections.abc import Sequence

    JSONDict = dict[str, Any]


class DataDirectories:
    """The directories file requests may touch (``serve --data-dir``); none: files refused."""

    def __init__(self, directories: Sequence[str]) -> None:
        self.roots = [os.path.realpath(directory) for directory in directories]

    def resolve(self, path: str, for_write: bool) -> str:
        """The real path of ``path``; ``RequestError`` (EACCES) unless it lies inside a data
        directory after every symlink is followed (a written file's own name is not followed:
        the write replaces it)."""
        if not self.roots:
            raise RequestError(
                "file requests are refused: the agent was started without --data-dir", "EACCES"
            )
        if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
            raise RequestError(
                f"path {brief(path)} must be absolute, without '..' components", "EACCES"
            )
        if for_write:
            parent, name = os.path.split(path)
            if not name:
                raise RequestError(f"path {brief(path)} names no file", "EACCES")
            resolved = os.path.join(os.path.realpath(parent), name)
        else:
            resolved = os.path.realpath(path)
        for root in self.roots:
            if resolved != root and os.path.commonpath([resolved, root]) == root:
                return resolved
        raise RequestError(
            f"path {brief(path)} (really {brief(resolved)}) is outside the agent's data "
            f"directories {self.roots}",
            "EACCES",
        )

    def write_file(self, path: str, size: int, seed: str) -> JSONDict:
        resolved = self.resolve(path, for_write=True)
        directory, name = os.path.split(resolved)
        digest = hashlib.sha256()
        # Write then rename, so a reader in the other container never sees half a file; the
        # temporary name is created, never followed (O_EXCL | O_NOFOLLOW).
        temporary = os.path.join(
            directory, f".{name}.netconform-{os.getpid()}-{threading.get_ident()}"
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as out:
                for chunk in iter_deterministic_chunks(seed, size):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, resolved)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return {"sha256": digest.hexdigest(), "size": size, "path": path}

    def read_file(self, path: str) -> JSONDict:
        resolved = self.resolve(path, for_write=False)
        # O_NONBLOCK: a FIFO in a volume must not hang the request; only regular files count.
        descriptor = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as source:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise RequestError(f"{brief(path)} is not a regular file", "EINVAL")
            digest = hashlib.sha256()
            size = 0
            for chunk in iter(lambda: source.read(FILE_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        return {"sha256": digest.hexdigest(), "size": size, "path": path}
