"""A base for fake probe clients in unit tests: records every batch and the threads that sent
it, hands out itself as each thread's client (counting), and fails (pod, container) pairs listed
in ``broken`` the way an exec into a dead container fails."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.kit.base.errors import ProbeExecError


@dataclass
class RecordingProbeClient:
    """Stands in for a `ProbeClient` (the calls the kit's thread pool makes)."""

    broken: frozenset[tuple[str, str]] = frozenset()
    barrier: threading.Barrier | None = None  # every call waits here (concurrency tests)
    calls: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    clones: int = 0
    closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_thread(self) -> Any:
        with self._lock:
            self.clones += 1
        return self

    def close(self) -> None:
        with self._lock:
            self.closed += 1

    def record(self, pod: str, container: str, requests: Sequence[Mapping[str, Any]]) -> None:
        """Note one batch; wait at the barrier; raise `ProbeExecError` for a broken container."""
        with self._lock:
            self.calls.append((pod, container, tuple(str(r["op"]) for r in requests)))
            self.threads.add(threading.get_ident())
        if self.barrier is not None:
            self.barrier.wait()
        if (pod, container) in self.broken:
            raise ProbeExecError("exec failed: container not running", pod=pod, container=container)
