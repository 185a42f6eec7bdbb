"""Container logs, as ``kubectl logs`` reads them through the kubelet: one file per container
attempt (``<pod dir>/<container>/<restart>.log``, stdout and stderr interleaved), the previous
attempt on request, the last lines, and following until the attempt ends or the pod stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from netlab.contract import ContainerNotFound
from netlab.kubelet.pods import ContainerRecord, PodRecord

LOG_FOLLOW_INTERVAL = 0.2  # seconds between reads of a followed log


async def container_logs(
    record: PodRecord,
    container: str,
    *,
    follow: bool,
    tail_lines: int | None,
    previous: bool,
) -> AsyncIterator[bytes]:
    """The output of one attempt of ``container`` (raises ContainerNotFound on the first chunk
    for an unknown container, or a previous attempt that does not exist)."""
    target = record.find(container)
    index = target.log_index - 1 if previous else target.log_index
    path = record.directory / target.name / f"{index}.log"
    if previous and (index < 0 or not path.exists()):
        raise ContainerNotFound(
            f'previous terminated container "{container}" in pod "{record.name}" not found'
        )
    async for chunk in _read_log(
        record, target, path, index, follow=follow and not previous, tail_lines=tail_lines
    ):
        yield chunk


async def _read_log(
    record: PodRecord,
    container: ContainerRecord,
    path: Path,
    index: int,
    *,
    follow: bool,
    tail_lines: int | None,
) -> AsyncIterator[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    offset = len(data)
    if tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
    if data:
        yield data
    while follow:
        # Bounded by the container attempt: following ends when it exits or the pod stops.
        alive = container.is_running and container.log_index == index
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if not alive or record.stopping.is_set():
            return
        await record.stopped_within(LOG_FOLLOW_INTERVAL)
