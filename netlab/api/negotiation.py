"""Media types, as kube-apiserver negotiates them (k8s.io/apiserver/pkg/endpoints/handlers/
negotiation): a request body in a type the server cannot decode is 415 UnsupportedMediaType
naming the types it accepts; an ``Accept`` header it can serve none of is 406 NotAcceptable
naming the types it can answer in.

The lab decodes and encodes JSON and YAML, not protobuf (netlab has no protobuf codec for the
Kubernetes types: docs/architecture.md says why), so its lists name those two where
kube-apiserver also names ``application/vnd.kubernetes.protobuf``. A client that sends
protobuf gets the real 415 and its real text. client-go does not fall back to JSON on it (its
415 fallback, since 1.32, is for CBOR request bodies only), so a protobuf client must be told
to speak JSON (``--kube-api-content-type=application/json`` for the upstream e2e binaries).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml
from aiohttp import web

from netlab.api.errors import ApiError

JSON = "application/json"
YAML = "application/yaml"
BODY_TYPES = (JSON, YAML)  # what a create, update or DeleteOptions body may be
OUTPUT_TYPES = (JSON, YAML)  # what a response can be
STREAM_TYPES = (f"{JSON};stream=watch",)  # what a watch can be
# Parameters an Accept clause may carry (kube-apiserver's acceptMediaTypeOptions): anything
# else makes the clause one the server cannot serve.
_ACCEPT_PARAMETERS = frozenset({"as", "g", "v", "pretty", "stream", "q", "charset"})


def media_type(header: str) -> str:
    """The bare media type of a Content-Type or Accept clause (parameters dropped)."""
    return header.split(";", 1)[0].strip().lower()


def unsupported_media_type(accepted: tuple[str, ...]) -> ApiError:
    return ApiError(
        415,
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def check_body_type(content_type: str, accepted: tuple[str, ...] = BODY_TYPES) -> str:
    """The body's media type, when ``accepted``; an empty Content-Type is the first accepted
    type (kube-apiserver's NegotiateInputSerializer). 415 otherwise."""
    kind = media_type(content_type)
    if not kind:
        return accepted[0]
    if kind not in accepted:
        raise unsupported_media_type(accepted)
    return kind


@dataclass(frozen=True)
class _Clause:
    kind: str
    parameters: dict[str, str]
    quality: float


def _clauses(accept: str) -> list[_Clause]:
    clauses = []
    for raw in accept.split(","):
        parts = [part.strip() for part in raw.split(";")]
        if not parts[0]:
            continue
        parameters = {}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            parameters[key.strip().lower()] = value.strip()
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            quality = 0.0
        clauses.append(_Clause(parts[0].lower(), parameters, quality))
    # Highest quality first; equal qualities keep the client's order (goautoneg's sort).
    return sorted(clauses, key=lambda clause: -clause.quality)


def negotiate_output(accept: str, *, watch: bool = False) -> str:
    """The media type to answer in (JSON or, for a non-watch request, YAML), from the Accept
    header; 406 NotAcceptable with the types the lab serves when no clause fits."""
    if not accept.strip():
        return JSON
    for clause in _clauses(accept):
        if clause.quality <= 0 or set(clause.parameters) - _ACCEPT_PARAMETERS:
            continue
        if clause.kind in ("*/*", "application/*", JSON):
            return JSON
        if clause.kind == YAML and not watch:
            return YAML
    supported = STREAM_TYPES if watch else OUTPUT_TYPES
    raise ApiError(406, "only the following media types are accepted: " + ", ".join(supported))


def is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("1", "true") or "/watch/" in request.path


def as_yaml(response: web.Response) -> web.Response:
    """A JSON response re-encoded as YAML (the same object, as the YAML serializer writes it)."""
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return response
    document = json.loads(body) if body else None
    converted = web.Response(
        body=yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode(),
        status=response.status,
        content_type=YAML,
    )
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            converted.headers.add(name, value)
    return converted


# Subresources that stream their own bytes (text, SPDY, WebSocket): no media type to negotiate.
_STREAMING = re.compile(r"/(exec|log|attach|portforward)$|/proxy(/|$)")


def negotiated_paths(path: str) -> bool:
    """Whether a path's answers are negotiated objects (the API and its OpenAPI documents)."""
    return path.startswith(("/api", "/openapi")) and not _STREAMING.search(path)
