"""Choosing a pod's container for exec and logs, with the real server's 400 messages."""

from __future__ import annotations

from netlab.api.errors import ApiError
from netlab.contract import JSONDict


def resolve_container(pod: JSONDict, requested: str | None) -> str:
    spec = pod.get("spec", {})
    name = pod["metadata"]["name"]
    names: list[str] = [str(c["name"]) for c in spec.get("containers") or []]
    init_names = [str(c["name"]) for c in spec.get("initContainers") or []]
    ephemeral = [str(c["name"]) for c in spec.get("ephemeralContainers") or []]
    if not requested:
        if len(names) == 1:
            return names[0]
        message = (
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
        )
        if init_names:
            message += f" or one of the init containers: [{' '.join(init_names)}]"
        raise ApiError(400, message)
    if requested not in names + init_names + ephemeral:
        raise ApiError(400, f"container {requested} is not valid for pod {name}")
    return requested


def node_of(pod: JSONDict, container: str) -> str:
    """The pod's node; 400 (waiting to start) while it has none, as the real server says."""
    node = pod.get("spec", {}).get("nodeName")
    if not node:
        raise ApiError(
            400,
            f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: ContainerCreating',
        )
    return str(node)
