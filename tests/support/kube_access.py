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


def apply_manifest(api: client.ApiClient, manifest: Path) -> list[str]:
    """Create every object of a YAML manifest (``kubectl create -f``), objects already there
    left as they are; the ``kind/name`` of each."""
    import yaml
    from kubernetes import utils

    made = []
    for document in yaml.safe_load_all(manifest.read_text()):
        if not document:
            continue
        try:
            utils.create_from_dict(api, document)
        except utils.FailToCreateError as failed:
            if any(getattr(exc, "status", None) != 409 for exc in failed.api_exceptions):
                raise
        made.append(f"{document['kind']}/{document['metadata']['name']}")
    return made


def service_account_kubeconfig(
    admin: Path, namespace: str, name: str, path: Path, *, seconds: int = 7200
) -> Path:
    """A kubeconfig at ``path`` for the cluster of ``admin`` holding only a bearer token of
    ServiceAccount ``namespace/name`` (``kubectl create token``, valid ``seconds``)."""
    import yaml

    with kube_api(admin) as api:
        token = (
            client.CoreV1Api(api)
            .create_namespaced_service_account_token(
                name,
                namespace,
                client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
                ),
            )
            .status.token
        )
    config_text = yaml.safe_load(admin.read_text())
    context = next(
        c for c in config_text["contexts"] if c["name"] == config_text["current-context"]
    )
    cluster = next(c for c in config_text["clusters"] if c["name"] == context["context"]["cluster"])
    user = f"system:serviceaccount:{namespace}:{name}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": user}}],
                "current-context": name,
            }
        )
    )
    path.chmod(0o600)
    return path
