"""nodes/proxy: the API server's way to a node's kubelet (``/api/v1/nodes/NAME[:PORT]/proxy/
PATH``), as the upstream e2e framework uses it to list the pods a kubelet runs when it dumps a
failed spec.

The lab's kubelets live in the lab daemon and listen on no port, so the lab answers the
kubelet's read-only endpoints itself, from what it knows: ``/pods`` (the PodList of the pods
bound to the node, as kubelet's pod manager lists them) and ``/healthz``; any other path is
kubelet's own 404. A port other than the kubelet's (10250) has nothing behind it: the answer
is the 503 kube-apiserver gives when it cannot reach the node.
"""

from __future__ import annotations

import re

from aiohttp import web

from netlab.api.encode import dumps
from netlab.api.errors import ApiError, not_found
from netlab.api.store import Store

KUBELET_PORT = 10250
PROXY_PATH = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)/proxy(?P<path>/.*)?$")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def split_name(raw: str) -> tuple[str, str, int]:
    """``[scheme:]name[:port]`` -> (scheme, node name, port), as kube-apiserver's
    SplitSchemeNamePort reads a proxy name; 400 for one it cannot read."""
    parts = raw.split(":")
    scheme, name, port = "", raw, ""
    if len(parts) == 2:
        name, port = parts
    elif len(parts) == 3:
        scheme, name, port = parts
    elif len(parts) > 3:
        raise ApiError(400, f"invalid node request {raw!r}")
    if scheme not in ("", "http", "https") or not name:
        raise ApiError(400, f"invalid node request {raw!r}")
    if not port:
        return scheme, name, KUBELET_PORT
    if not port.isdigit():
        raise ApiError(400, f"invalid node request {raw!r}")
    return scheme, name, int(port)


def serve_node_proxy(request: web.Request, store: Store, raw_name: str, path: str) -> web.Response:
    """Answer a nodes/proxy request for ``path`` on the node ``raw_name`` names."""
    if request.method not in METHODS:
        raise ApiError(405, "the server does not allow this method on the requested resource")
    _, name, port = split_name(raw_name)
    node = store.get("nodes", "", name)
    if node is None:
        raise not_found("nodes", name)
    if port != KUBELET_PORT:
        address = next(
            (
                entry["address"]
                for entry in node.get("status", {}).get("addresses") or []
                if entry.get("type") == "InternalIP"
            ),
            name,
        )
        raise ApiError(
            503,
            f"error trying to reach service: dial tcp {address}:{port}: connect: connection refused",
        )
    if request.method in ("GET", "HEAD") and path.rstrip("/") == "/pods":
        pods = sorted(
            (p for p in store.list("pods") if p.get("spec", {}).get("nodeName") == name),
            key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"]),
        )
        listing = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                {k: v for k, v in p.items() if k not in ("kind", "apiVersion")} for p in pods
            ],
        }
        return web.Response(body=dumps(listing), content_type="application/json")
    if request.method in ("GET", "HEAD") and path == "/healthz":
        return web.Response(text="ok", content_type="text/plain")
    return web.Response(status=404, text="404 page not found\n", content_type="text/plain")
