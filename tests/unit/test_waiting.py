"""`conformance.kit.waiting.wait_on_list`: list, watch from there, and list and watch again when
the watch ends or breaks (cut connection, 410 Gone, 429/5xx) until the condition or the
deadline; a refusal that will not change (403) is an error at once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit import waiting
from conformance.kit.errors import ClusterError
from conformance.kit.settings import Timeouts

QUICK = Timeouts(api_retry=0.5)


def account(name: str) -> client.V1ServiceAccount:
    return client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))


class _Lister:
    """A list function whose answer grows by one item per call (the world moves on)."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.calls = 0

    def __call__(self, *_: Any, **__: Any) -> client.V1ServiceAccountList:
        self.calls += 1
        present = self.names[: self.calls]
        return client.V1ServiceAccountList(
            items=[account(n) for n in present],
            metadata=client.V1ListMeta(resource_version=str(self.calls)),
        )


def broken_watches(*failures: BaseException) -> Any:
    """A stand-in for `watch_events` whose nth watch raises ``failures[n]`` at once."""
    remaining = list(failures)

    def events(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        if remaining:
            raise remaining.pop(0)
        yield from ()

    return events


def has(name: str) -> waiting.Condition:
    def done(objects: Mapping[str, Any]) -> bool:
        return name in objects

    return done


@pytest.mark.parametrize(
    "failure",
    [
        urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead"),
        ApiException(status=410, reason="Gone"),
        ApiException(status=429, reason="Too Many Requests"),
        ApiException(status=500, reason="Internal Server Error"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["cut", "gone", "throttled", "server-error", "reset"],
)
def test_a_broken_watch_lists_and_watches_again(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    monkeypatch.setattr(waiting, "watch_events", broken_watches(failure, failure))
    lister = _Lister("other", "x", "default")
    found = waiting.wait_on_list(
        "serviceaccounts", lister, "ns", done=has("default"), timeout=20, timeouts=QUICK
    )
    assert found is not None
    assert set(found) == {"other", "x", "default"}
    assert lister.calls == 3


def test_events_keep_the_objects_current(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def events(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        yield {"type": "BOOKMARK", "object": account("ignored")}
        yield {"type": "DELETED", "object": account("other")}
        yield {"type": "ADDED", "object": account("default")}

    monkeypatch.setattr(waiting, "watch_events", events)
    found = waiting.wait_on_list(
        "serviceaccounts",
        _Lister("other"),
        "ns",
        done=has("default"),
        on_event=lambda kind, obj: seen.append((kind, obj.metadata.name)),
        timeout=20,
        timeouts=QUICK,
    )
    assert found is not None
    assert set(found) == {"default"}
    assert seen == [("DELETED", "other"), ("ADDED", "default")]


def test_a_refused_watch_is_an_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        waiting, "watch_events", broken_watches(ApiException(status=403, reason="Forbidden"))
    )
    with pytest.raises(ClusterError, match="watch serviceaccounts in ns: HTTP 403"):
        waiting.wait_on_list(
            "serviceaccounts in ns",
            _Lister("other", "x"),
            "ns",
            done=has("default"),
            timeout=20,
            timeouts=QUICK,
        )


def test_the_deadline_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "watch_events", broken_watches())
    lister = _Lister("other")
    found = waiting.wait_on_list(
        "serviceaccounts", lister, "ns", done=has("default"), timeout=0.5, timeouts=QUICK
    )
    assert found is None
    assert lister.calls >= 1
