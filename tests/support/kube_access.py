"""A cluster through the official client, as the API and lab tests reach it: an API client for a
kubeconfig, and an exec in a pod over the client's websocket stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.stream import stream


@contextmanager
def kube_api(kubeconfig: Path, *, retries: int | None = None) -> Iterator[client.ApiClient]:
    """An API client for ``kubeconfig``, closed afterwards. ``retries=0``: urllib3 does not
    retry a 429 or 503 carrying Retry-After itself (tests of those answers see them)."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        str(kubeconfig), client_configuration=configuration
    )
    configuration.retries = retries
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


def pod_exec(
    core: Any,
    pod: str,
    namespace: str,
    command: Sequence[str],
    *,
    preload: bool = True,
    stdin: bool = False,
    stderr: bool = True,
    headers: dict[str, str] | None = None,
) -> Any:
    """``command`` in ``pod`` through ``core`` (a CoreV1Api), no tty: its output when
    ``preload``, else the open stream (`kubernetes.stream.ws_client.WSClient`) to drive.
    ``headers``: extra request headers (say, an older exec protocol)."""
    extra = {"_headers": headers} if headers is not None else {}
    return stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=list(command),
        stdout=True,
        stderr=stderr,
        stdin=stdin,
        tty=False,
        _preload_content=preload,
        **extra,
    )
