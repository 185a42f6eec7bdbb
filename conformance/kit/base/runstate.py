"""Run-wide state shared by the processes of one run (the controller and xdist workers).

A run has one directory (`RunInfo.shared_dir`). Whatever must be computed once per run (the
probe deployment, the reachability sweep, the prefetch) goes through `once`: the first process
to ask takes the run's lock, computes, and writes the encoded result atomically; every later
caller, in any process, decodes what was written. A failure is recorded too, so later callers
get the same cause instead of trying again. This is pytest-xdist's documented recipe "making
session-scoped fixtures execute only once", in one place.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.base.jsondata import JSONData

T = TypeVar("T")
D = TypeVar("D", bound=JSONData)

STARTED = "started"
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class RunInfo(JSONData):
    """Identity of a run, made by the controller (or the only process) and handed to xdist
    workers through ``workerinput``."""

    run_id: str
    namespace: str
    shared_dir: str
    #: Seed of the run's pair sampling (``--pairs-seed``, else random): the same in every
    #: process, so xdist workers parametrize alike.
    pairs_seed: int = 0

    def path(self, name: str) -> Path:
        """Where the run keeps record ``name`` (``<shared_dir>/<name>.json``)."""
        return Path(self.shared_dir) / f"{name}.json"


@dataclass(frozen=True)
class Record:
    """What the run wrote for one name: ``status`` started/done/failed, the encoded value or
    the error."""

    status: str
    value: Any = None
    error: str = ""


def write_json_atomically(path: Path, data: Any, *, indent: int | None = None) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename: readers see the old file or
    the new one, never half of one. Parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=indent, sort_keys=indent is None) + "\n")
    os.replace(temporary, path)
    return path


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (shared by the run's processes, xdist workers too)."""
    # flock is released by the kernel if the holder dies, so a crashed worker cannot wedge
    # the others.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def peek(run: RunInfo, name: str) -> Record | None:
    """The record ``name`` as written so far (None when no process started it)."""
    try:
        raw = json.loads(run.path(name).read_text())
    except FileNotFoundError:
        return None
    return Record(status=str(raw["status"]), value=raw.get("value"), error=raw.get("error") or "")


def write(run: RunInfo, name: str, value: Any) -> None:
    """Record ``value`` (JSON-ready) under ``name`` as done, replacing what was there."""
    write_json_atomically(run.path(name), {"status": DONE, "value": value})


def once(
    run: RunInfo,
    name: str,
    compute: Callable[[], T],
    *,
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
    error: Callable[[str], CouldNotTest],
) -> T:
    """``compute()`` on the first call in the whole run (any process); ``decode`` of what it
    wrote on every later call.

    A computation that failed, or whose process died midway, is not repeated: every later
    caller gets ``error(cause)``. The first caller's own exception propagates unchanged.
    """
    with run_lock(run.path(name).with_suffix(".lock")):
        found = peek(run, name)
        if found is not None:
            if found.status == DONE:
                return decode(found.value)
            raise error(found.error or f"an earlier {name} in this run died midway")
        write_json_atomically(run.path(name), {"status": STARTED})
        try:
            result = compute()
        except BaseException as exc:
            cause = str(exc) or repr(exc)
            write_json_atomically(run.path(name), {"status": FAILED, "error": cause})
            raise
        write(run, name, encode(result))
        return result


def once_data(
    run: RunInfo,
    name: str,
    compute: Callable[[], D],
    kind: type[D],
    error: Callable[[str], CouldNotTest],
) -> D:
    """`once` for one `JSONData` value: written with its ``to_dict``, read back with
    ``kind.from_dict``."""
    return once(run, name, compute, encode=kind.to_dict, decode=kind.from_dict, error=error)


def read_value(run: RunInfo, name: str, decode: Callable[[Any], T]) -> T | None:
    """The decoded value of a finished record (None when absent, unfinished or unreadable)."""
    found = peek(run, name)
    if found is None or found.status != DONE:
        return None
    try:
        return decode(found.value)
    except (KeyError, TypeError, ValueError):
        return None


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else empty (for records read back from disk)."""
    return value if isinstance(value, Mapping) else {}
