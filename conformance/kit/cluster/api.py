"""API access: an API client from kubeconfig/context/in-cluster, API calls with bounded
retries (`call_api`), watches, and the few accessors every module uses on client models."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.permissions import explain_forbidden

if TYPE_CHECKING:  # discovery builds on this module
    pass

T = TypeVar("T")


def name_of(obj: Any) -> str:
    """``metadata.name`` of a client model ("" when unset)."""
    meta = getattr(obj, "metadata", None)
    return str(meta.name) if meta is not None and meta.name else ""


def labels_of(obj: Any) -> dict[str, str]:
    """``metadata.labels`` of a client model (empty when unset)."""
    meta = getattr(obj, "metadata", None)
    return dict(meta.labels or {}) if meta is not None else {}


def resource_version_of(listed: Any) -> str | None:
    """``metadata.resourceVersion`` of a list, to start a watch right after it."""
    meta = getattr(listed, "metadata", None)
    return str(meta.resource_version) if meta is not None and meta.resource_version else None


def watch_events(
    list_fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """Watch events of ``list_fn`` for at most ``timeout`` seconds (server- and client-side)."""
    watcher = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        yield from watcher.stream(  # type: ignore[no-untyped-call]
            list_fn,
            *args,
            timeout_seconds=max(1, int(timeout)),
            _request_timeout=timeout + 10,
            **kwargs,
        )
    finally:
        watcher.stop()  # type: ignore[no-untyped-call]


def make_api_client(settings: Settings) -> client.ApiClient:
    """A client for the kubeconfig (and context) in ``settings``, or in-cluster when none."""
    try:
        if settings.kubeconfig:
            api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, context=settings.context, persist_config=False
            )
        else:
            configuration = client.Configuration()
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            api = client.ApiClient(configuration)
    except (config.ConfigException, OSError, ValueError) as exc:
        if settings.kubeconfig:
            where = f"kubeconfig {settings.kubeconfig}"
            if settings.context:
                where += f" (context {settings.context})"
        else:
            where = "in-cluster configuration (no --kubeconfig, $KUBECONFIG or ~/.kube/config)"
        raise ClusterError(f"cannot load {where}: {exc}") from exc
    # Exec/watch streams must not hang behind a proxy-less default retry storm.
    api.configuration.retries = 1
    return api


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: throttling, server errors, broken connections."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _status_message(body: str) -> str | None:
    """The ``message`` of a Status body, None when the body is not one."""
    try:
        status = json.loads(body)
    except ValueError:
        return None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message) if message else None


def describe_api_error(exc: BaseException) -> str:
    """A one-line reason for an API failure (status, reason, the server's message); an RBAC
    denial also names the missing permission and what needs it (`explain_forbidden`)."""
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
        if body and exc.status == 403:
            message = f"{message}: {_status_message(str(body)) or str(body).strip()[:500]}"
        elif body:
            message = f"{message}: {str(body).strip()[:500]}"
        # A refused exec handshake carries the 403 in its reason (status 0).
        explained = explain_forbidden(message)
        described = f"HTTP {exc.status} {message}".strip()
        return f"{described}; {explained}" if explained else described
    return f"{type(exc).__name__}: {exc}"


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds a 429/503 answer asks the client to wait (its ``Retry-After`` header, or the
    Status's ``details.retryAfterSeconds``); None when it does not say."""
    if not isinstance(exc, ApiException):
        return None
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    try:
        details = (json.loads(body or "") or {}).get("details") or {}
        return float(details["retryAfterSeconds"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


#: At most this long a Retry-After is honoured (a server asking for more is not waited on
#: beyond the call's retry budget anyway).
MAX_RETRY_AFTER = 30.0


def _wait_for_retry(state: RetryCallState) -> float:
    """Exponential back-off, at least what the server's Retry-After asks."""
    backoff = float(wait_exponential(multiplier=0.5, max=5)(state))
    outcome = state.outcome
    asked = retry_after(outcome.exception() if outcome is not None else None)
    return max(backoff, min(asked, MAX_RETRY_AFTER)) if asked is not None else backoff


def call_api(what: str, fn: Callable[..., T], *args: Any, timeouts: Timeouts, **kwargs: Any) -> T:
    """Call ``fn`` with bounded retries on transient errors; raise `ClusterError` naming ``what``.

    Non-transient API errors (403, 404, 422...) are not retried; 404 is re-raised as the
    original ``ApiException`` so callers can treat "already gone" as success.
    """
    kwargs.setdefault("_request_timeout", timeouts.api_request)

    def give_up(state: RetryCallState) -> T:
        outcome = state.outcome
        assert outcome is not None
        exc = outcome.exception()
        assert exc is not None
        raise ClusterError(
            f"{what} failed after {state.attempt_number} attempts "
            f"({timeouts.api_retry:.0f}s budget): {describe_api_error(exc)}"
        ) from exc

    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(timeouts.api_retry),
            wait=_wait_for_retry,
            retry_error_callback=give_up,
        ):
            with attempt:
                return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            raise
        raise ClusterError(f"{what} failed: {describe_api_error(exc)}") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
