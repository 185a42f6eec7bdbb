"""API errors as v1 Status objects, shaped like the real API server's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from netlab.contract import JSONDict

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "AlreadyExists",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_object(
    code: int, message: str, reason: str | None = None, details: JSONDict | None = None
) -> JSONDict:
    """A v1 Status with status Failure (or Success for 2xx); an empty reason is left out, as
    Go's encoder leaves out StatusReasonUnknown."""
    body: JSONDict = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason if reason is not None else REASONS.get(code, ""),
        "code": code,
    }
    if not body["reason"]:
        del body["reason"]
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    """Raised anywhere in a handler; the middleware turns it into a Status response."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: JSONDict | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status_object(code, message, reason, details)

    def response(self) -> web.Response:
        """The Status as JSON; ``details.retryAfterSeconds`` also becomes a Retry-After header,
        as kube-apiserver's ErrorNegotiated writes it."""
        response = web.json_response(self.status, status=self.code)
        retry_after = (self.status.get("details") or {}).get("retryAfterSeconds")
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response


def _qualified(name: str, group: str) -> str:
    """A resource or kind as the server names it in messages: ``endpointslices.discovery.k8s.io``
    for named groups, plain for core."""
    return f"{name}.{group}" if group else name


def _details(name: str, kind: str, group: str) -> JSONDict:
    return {"name": name, **({"group": group} if group else {}), "kind": kind}


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404,
        f'{_qualified(resource, group)} "{name}" not found',
        details=_details(name, resource, group),
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        f'{_qualified(resource, group)} "{name}" already exists',
        details=_details(name, resource, group),
    )


def invalid(kind: str, name: str, causes: list[JSONDict], group: str = "") -> ApiError:
    """422 Invalid: message lists every cause as `field: message`, as the real server does."""
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        f'{_qualified(kind, group)} "{name}" is invalid: {joined}',
        details={**_details(name, kind, group), "causes": causes},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


# Field errors (k8s.io/apimachinery's field.Error) as the causes of a 422 Invalid.


def field_cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, Any]:
    return {"reason": reason, "message": message, "field": field}


def field_value(value: Any) -> str:
    """A bad value as field.Error prints it: strings quoted, numbers bare."""
    return json.dumps(value) if isinstance(value, str) else str(value)


def field_invalid(field: str, value: Any, detail: str) -> dict[str, Any]:
    return field_cause(field, f"Invalid value: {field_value(value)}: {detail}")


def field_not_supported(field: str, value: Any, supported: Iterable[str]) -> dict[str, Any]:
    listing = ", ".join(json.dumps(s) for s in supported)
    return field_cause(
        field,
        f"Unsupported value: {field_value(value)}: supported values: {listing}",
        "FieldValueNotSupported",
    )
