"""Parsing a request: the URL into a target, query parameters, the body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from netlab.api.discovery import RESOURCES
from netlab.api.encode import loads
from netlab.api.errors import ApiError
from netlab.api.negotiation import BODY_TYPES, check_body_type

NOT_FOUND = "the server could not find the requested resource"


@dataclass(frozen=True)
class Target:
    """What a /api/v1/... path names."""

    resource: str
    namespace: str | None  # None: cluster-scoped or all namespaces
    name: str | None
    subresource: str | None = None


def parse_path(path: str) -> Target | None:
    """The target of a resource path (core ``/api/v1/...`` or a named group's
    ``/apis/GROUP/VERSION/...``), or None when the path names nothing we serve."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"] and len(parts) >= 3:
        api_version, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in RESOURCES:
        namespace, resource, tail = rest[1], rest[2], rest[3:]
        if RESOURCES[resource].api_version != api_version:
            return None
        if not RESOURCES[resource].namespaced or len(tail) > 2:
            return None
        return Target(
            resource, namespace, tail[0] if tail else None, tail[1] if len(tail) > 1 else None
        )
    resource, tail = rest[0], rest[1:]
    if resource not in RESOURCES or len(tail) > 2:
        return None
    if RESOURCES[resource].api_version != api_version:
        return None  # e.g. /api/v1/endpointslices: served in its own group only
    if RESOURCES[resource].namespaced and tail:
        return None  # /api/v1/pods/x is not a path
    return Target(resource, None, tail[0] if tail else None, tail[1] if len(tail) > 1 else None)


def int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            400, f"unable to parse query parameter {name}={raw!r}: not an integer"
        ) from None


def bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise ApiError(400, f"unable to parse query parameter {name}={raw!r}: not a boolean")


def field_validation(request: web.Request) -> str:
    value = request.query.get("fieldValidation", "Warn") or "Warn"
    if value not in ("Strict", "Warn", "Ignore"):
        raise ApiError(
            400,
            f"fieldValidation parameter unsupported: {value!r}, expected one of Ignore, Warn, Strict",
        )
    return value


async def read_body(
    request: web.Request,
    *,
    kind: str,
    required: bool = True,
    accepted: tuple[str, ...] = BODY_TYPES,
) -> Any:
    """The decoded body (JSON, or YAML when the content type says so): 415 for a content type
    not ``accepted`` (before the body is read, as kube-apiserver negotiates first), 400 when
    unreadable."""
    check_body_type(request.headers.get("Content-Type", ""), accepted)
    raw = await request.read()  # client_max_size turns an oversized body into 413
    if not raw.strip():
        if required:
            raise ApiError(
                400,
                f"the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: unexpected end of JSON input",
            )
        return None
    try:
        if "yaml" in (request.content_type or ""):
            return yaml.safe_load(raw)
        return loads(raw)
    except (ValueError, yaml.YAMLError) as error:
        message = str(error).splitlines()[0][:200]
        raise ApiError(
            400,
            f"the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: {message}",
        ) from None
