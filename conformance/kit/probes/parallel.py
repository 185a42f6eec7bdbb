"""Agent calls to many containers at once: a bounded thread pool, one API client per thread.

The kubernetes client's exec swaps ``call_api`` on its API client while it runs, so each task
gets its own client (`ProbeClient.for_thread`). Shared by the reachability sweep and the
prefetch of per-pod checks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from conformance.kit.base.errors import ProbeCallError
from conformance.kit.probes.client import ProbeClient

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def in_parallel(
    probe_client: ProbeClient,
    groups: Mapping[K, V],
    work: Callable[[ProbeClient, K, V], None],
    on_error: Callable[[V, ProbeCallError], None],
    *,
    max_parallel: int,
) -> None:
    """Run ``work(own_client, key, group)`` for every group, at most ``max_parallel`` at a time.

    A group whose work raises `ProbeCallError` (its container could not be asked) is handed to
    ``on_error``; the other groups are not affected. Any other exception propagates.
    """
    if not groups:
        return

    def run(key: K) -> None:
        group = groups[key]
        own = probe_client.for_thread()
        try:
            work(own, key, group)
        except ProbeCallError as exc:
            on_error(group, exc)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(groups)))) as pool:
        list(pool.map(run, list(groups)))
