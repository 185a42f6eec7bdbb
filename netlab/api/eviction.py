"""The policy/v1 Eviction subresource (``POST .../pods/NAME/eviction``) as kube-apiserver
serves it: the request checked, the eviction done by ``netlab.api.controllers.eviction``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from netlab.api.cluster.pods import PodLifecycle
from netlab.api.controllers.eviction import evict
from netlab.api.errors import ApiError
from netlab.api.request import read_body
from netlab.api.rest import respond
from netlab.contract import JSONDict

EVICTION_VERSIONS = ("policy/v1", "policy/v1beta1")


def _grace(options: Any) -> int | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ApiError(400, "Eviction.deleteOptions must be a DeleteOptions object")
    value = options.get("gracePeriodSeconds")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, "DeleteOptions.gracePeriodSeconds must be an integer")
    return max(value, 0)


async def serve_eviction(request: web.Request, pods: PodLifecycle, pod: JSONDict) -> web.Response:
    """Evict ``pod``: mark it DisruptionTarget and delete it gracefully; 201 with a Success
    Status, as kube-apiserver answers."""
    body = await read_body(request, kind="Eviction")
    if not isinstance(body, dict):
        raise ApiError(400, "the object provided is unrecognized (must be of type Eviction)")
    if body.get("kind") not in (None, "", "Eviction") or body.get("apiVersion") not in (
        None,
        "",
        *EVICTION_VERSIONS,
    ):
        raise ApiError(
            400,
            f"the object provided is unrecognized (must be of type Eviction): got "
            f"{body.get('apiVersion')}, Kind={body.get('kind')}",
        )
    meta = body.get("metadata")
    if not isinstance(meta, dict) or meta.get("name") != pod["metadata"]["name"]:
        raise ApiError(400, "name in URL does not match name in Eviction object")
    options = body.get("deleteOptions")
    grace = _grace(options)
    dry_run = bool(request.query.get("dryRun")) or bool(
        isinstance(options, dict) and options.get("dryRun")
    )
    if not dry_run:
        evict(pods, pod, grace)
    return respond(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201},
        201,
    )
