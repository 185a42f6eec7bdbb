"""A pytest plugin for the suite's own run (``-p record_requests``, this folder on PYTHONPATH):
appends every request the kubernetes client sends, one JSON line ``{method, url, websocket}``
each, to the file named by ``$NETCONFORM_RECORD_REQUESTS``. Plain requests go through
``RESTClientObject.request``, exec streams through ``ws_client.create_websocket``."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
from kubernetes.client import rest
from kubernetes.stream import ws_client

RECORD_ENV = "NETCONFORM_RECORD_REQUESTS"
_lock = threading.Lock()  # probes are asked from many threads at once


def _record(method: str, url: str, websocket: bool) -> None:
    line = json.dumps({"method": method, "url": url, "websocket": websocket})
    with _lock, open(os.environ[RECORD_ENV], "a") as out:
        out.write(line + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(RECORD_ENV):
        return
    request = rest.RESTClientObject.request
    create_websocket = ws_client.create_websocket

    def recorded_request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        _record(method, url, False)
        return request(self, method, url, *args, **kwargs)

    def recorded_websocket(configuration: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        _record("GET", url, True)
        return create_websocket(configuration, url, *args, **kwargs)

    rest.RESTClientObject.request = recorded_request  # type: ignore[method-assign]
    ws_client.create_websocket = recorded_websocket
