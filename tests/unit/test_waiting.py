"""`conformance.kit.cluster.waiting.wait_on_list`: list, watch from there, and list and watch again when
the watch ends or breaks (cut connection, 410 Gone, 429/5xx) until the condition or the
deadline; a refusal that will not change (403) is an error at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from time import monotonic
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster import waiting

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


def stalled_watch(seconds: float, failure: BaseException) -> Any:
    """A watch that says nothing for ``seconds`` (a dead connection), then breaks."""

    def events(*_: Any, **__: Any) -> Iterator[dict[str, Any]]:
        end = monotonic() + seconds
        while monotonic() < end:  # a connection that hangs: no event, no error
            threading.Event().wait(0.05)
        raise failure
        yield  # pragma: no cover (a generator)

    return events


def test_a_watch_broken_past_the_deadline_gets_one_last_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The watch stalls past the deadline and breaks; meanwhile the account appeared. The last
    # list sees it: "it did not happen" never rests on a watch that saw nothing.
    monkeypatch.setattr(
        waiting,
        "watch_events",
        stalled_watch(0.6, urllib3.exceptions.ReadTimeoutError(None, "", "Read timed out.")),
    )
    lister = _Lister("other", "default")
    found = waiting.wait_on_list(
        "serviceaccounts", lister, "ns", done=has("default"), timeout=0.3, timeouts=QUICK
    )
    assert found is not None
    assert lister.calls == 2
    # And when the last look shows nothing either, the wait says so.
    monkeypatch.setattr(
        waiting,
        "watch_events",
        stalled_watch(0.6, urllib3.exceptions.ProtocolError("Connection broken")),
    )
    still = _Lister("other")
    assert (
        waiting.wait_on_list(
            "serviceaccounts", still, "ns", done=has("default"), timeout=0.3, timeouts=QUICK
        )
        is None
    )
    assert still.calls == 2


def test_a_last_look_that_cannot_be_made_could_not_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        waiting,
        "watch_events",
        stalled_watch(0.6, urllib3.exceptions.ProtocolError("Connection broken")),
    )
    answers = iter([client.V1ServiceAccountList(items=[account("other")])])

    def lister(*_: Any, **__: Any) -> client.V1ServiceAccountList:
        answer = next(answers, None)
        if answer is None:
            raise ApiException(status=403, reason="Forbidden")
        return answer

    with pytest.raises(ClusterError, match="list serviceaccounts failed: HTTP 403"):
        waiting.wait_on_list(
            "serviceaccounts", lister, "ns", done=has("default"), timeout=0.3, timeouts=QUICK
        )
