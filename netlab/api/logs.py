"""pods/log: a container's output, optionally followed, as text/plain."""

from __future__ import annotations

from aiohttp import web

from netlab.api.cluster.nodes import NodeRegistry
from netlab.api.containers import node_of, resolve_container
from netlab.api.errors import ApiError
from netlab.api.request import bool_param, int_param
from netlab.contract import ContainerNotFound, JSONDict, PodNotFound, RuntimeError_


async def serve_logs(
    request: web.Request, nodes: NodeRegistry, pod: JSONDict
) -> web.StreamResponse:
    container = resolve_container(pod, request.query.get("container"))
    follow = bool_param(request, "follow")
    previous = bool_param(request, "previous")
    tail = int_param(request, "tailLines")
    limit = int_param(request, "limitBytes")
    int_param(request, "sinceSeconds")  # validated, not applied
    if tail is not None and tail < 0:
        raise ApiError(
            422,
            f'PodLogOptions "{pod["metadata"]["name"]}" is invalid: tailLines: Invalid value: {tail}: must be greater than or equal to 0',
        )
    kubelet = nodes.kubelet_of(node_of(pod, container))
    if kubelet is None:
        raise ApiError(
            400,
            f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: ContainerCreating',
        )
    chunks = kubelet.logs(
        pod["metadata"]["uid"], container, follow=follow, tail_lines=tail, previous=previous
    )
    iterator = chunks.__aiter__()
    try:  # the first chunk before the headers go out, so a failure can still be a Status
        first: bytes | None = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except PodNotFound as error:
        raise ApiError(404, str(error) or f'pods "{pod["metadata"]["name"]}" not found') from None
    except (ContainerNotFound, RuntimeError_) as error:
        raise ApiError(400, str(error) or f"container {container} is not available") from None
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    sent = 0
    try:
        chunk = first
        while chunk is not None:
            if limit is not None:
                chunk = chunk[: max(limit - sent, 0)]
            if chunk:
                await response.write(chunk)
                sent += len(chunk)
            if limit is not None and sent >= limit:
                break
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                chunk = None
    except (ConnectionResetError, RuntimeError_):
        pass
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()
    return response
