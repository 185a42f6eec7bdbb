"""Rules kept in step with the API on every node, as a controller's reconcile loop does: the
lab's Service proxy (iptables) and its NetworkPolicy engine (nftables) both compute each
node's rules from the API's state and write only the nodes whose rules changed.

`RuleSync` holds the loop: ``notify`` (the state changed) wakes one sync, coalescing changes
made while a sync runs; ``synced`` waits until the written rules reflect every change notified
so far; the writes of one sync go out at most `WRITERS_AT_ONCE` at a time, and a node whose
write failed is forgotten, so the next sync writes it whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from netlab.dataplane.nsexec import communicate_within, nsenter_argv

#: Rule writers (iptables-restore, nft) running at once across the lab's nodes.
WRITERS_AT_ONCE = 8

Key = TypeVar("Key")
Rules = TypeVar("Rules")


@dataclass
class SyncFigures:
    """What the syncs cost: count, last and worst duration (seconds), node writes made."""

    syncs: int = 0
    last_seconds: float = 0.0
    max_seconds: float = 0.0
    writes: int = 0


class RuleSync(ABC, Generic[Key, Rules]):
    """The reconcile loop of one kind of node rules. Subclasses compute what to write in
    `sync` and hand it to `write_changed`; ``error`` is the exception a failed sync raises
    (logged by the loop, which goes on: the next change tries again)."""

    error: type[Exception] = RuntimeError
    what = "rules"  # for the log

    def __init__(self) -> None:
        self.figures = SyncFigures()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Condition()
        self._generation = 0  # notifications seen
        self._applied = 0  # the notification generation the rules reflect

    @abstractmethod
    async def sync(self) -> None:
        """Write every node's rules that changed, from the current state."""

    def follow(self) -> None:
        """After the first sync: sync again on every ``notify``."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def notify(self) -> None:
        """The state changed: sync soon."""
        self._generation += 1
        self._wake.set()

    async def synced(self, timeout: float) -> None:
        """Wait until every node's rules reflect every change notified so far."""
        wanted = self._generation
        async with asyncio.timeout(timeout), self._synced:
            await self._synced.wait_for(lambda: self._applied >= wanted)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except self.error as error:  # logged; the next change tries again
                logging.getLogger(type(self).__module__).error(
                    "%s sync failed: %s", self.what, error
                )

    def generation(self) -> int:
        """The notifications seen when a sync starts (what it will have applied)."""
        return self._generation

    async def write_changed(
        self,
        generation: int,
        started: float,
        changed: Mapping[Key, tuple[Rules, str]],
        write: Callable[[Key, str], Awaitable[None]],
        written: Callable[[Key, Rules | None], None],
    ) -> None:
        """Write each changed node's document (``changed``: key -> its rules and document),
        then tell ``written`` what each key holds now (None: unknown, written whole next
        time), count the figures and, when every write went through, mark ``generation``
        applied; else raise ``error`` with the first failure."""
        gate = asyncio.Semaphore(WRITERS_AT_ONCE)

        async def gated(key: Key, document: str) -> None:
            async with gate:
                await write(key, document)

        outcomes = await asyncio.gather(
            *(gated(key, document) for key, (_, document) in changed.items()),
            return_exceptions=True,
        )
        failures: list[BaseException] = []
        for (key, (rules, _)), outcome in zip(changed.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                written(key, None)
                failures.append(outcome)
            else:
                written(key, rules)
        elapsed = time.monotonic() - started
        self.figures.syncs += 1
        self.figures.writes += len(changed) - len(failures)
        self.figures.last_seconds = elapsed
        self.figures.max_seconds = max(self.figures.max_seconds, elapsed)
        if failures:
            raise self.error(str(failures[0]))
        async with self._synced:
            self._applied = max(self._applied, generation)
            self._synced.notify_all()


async def feed_rules(
    netns: str, command: list[str], document: str, timeout: float, error: type[Exception]
) -> None:
    """Run ``command`` (a rule writer reading its rules from stdin: iptables-restore, nft -f -)
    in ``netns`` with ``document``; ``error`` naming the writer and its first lines of errors
    when it fails or takes longer than ``timeout`` seconds."""
    argv = nsenter_argv(netns, command)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, errors = await communicate_within(process, timeout, document.encode())
    except TimeoutError:
        raise error(f"{command[0]} in {netns} timed out after {timeout} s") from None
    if process.returncode != 0:
        detail = errors.decode(errors="replace").strip().splitlines()
        raise error(
            f"{command[0]} in {netns} exited {process.returncode}: "
            f"{' | '.join(detail[:4]) or 'no output'}"
        )
