"""Images from OCI archives (``netlab up --image``): a container of an imported image sees the
image's files over the host's and runs its Entrypoint and Cmd with its Env and WorkingDir, as
containerd applies them; a container of another image sees the host alone, and one with neither
command nor args there waits with CreateContainerError."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kube_access import kube_api
from kubernetes import client
from netlab_commands import booted_lab
from oci import layer, oci_archive
from polling import until

pytestmark = pytest.mark.needs_lab

IMAGE = "example.test/netlab/greeter:1"
SCRIPT = b'#!/bin/sh\necho "$GREETING from $(pwd) with $(cat /greeter/note)"\nexec sleep 3600\n'


def _pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": image, **container}],
        },
    }


def test_an_imported_image_adds_its_files_and_its_entrypoint(tmp_path: Path, lab_name: str) -> None:
    archive = oci_archive(
        tmp_path / "greeter.tar",
        [
            layer(
                [
                    ("greeter", None, None),
                    ("greeter/run", SCRIPT, None),
                    ("greeter/note", b"the image's own file", None),
                ]
            )
        ],
        name=IMAGE,
        config={
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["/greeter/run"],
            "Env": ["GREETING=hello", "PATH=/usr/bin:/bin"],
            "WorkingDir": "/greeter",
        },
    )
    with (
        booted_lab(lab_name, "--nodes", "1", "--image", str(archive)) as kubeconfig,
        kube_api(kubeconfig) as api,
    ):
        core = client.CoreV1Api(api)
        ns = f"img-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": ns}})
        until(lambda: core.list_namespaced_service_account(ns).items, 10, "default SA")
        core.create_namespaced_pod(ns, _pod("greeter", IMAGE))
        core.create_namespaced_pod(
            ns, _pod("overridden", IMAGE, env=[{"name": "GREETING", "value": "hi"}])
        )
        core.create_namespaced_pod(ns, _pod("host-only", "busybox:1.36", args=["ls", "/greeter"]))
        core.create_namespaced_pod(ns, _pod("no-entrypoint", "busybox:1.36"))

        def log(pod: str) -> Callable[[], str]:
            return lambda: _log(core, ns, pod)

        expected = "from /greeter with the image's own file"
        assert until(log("greeter"), 30, "greeter's output") == f"hello {expected}\n"
        assert until(log("overridden"), 30, "overridden's output") == f"hi {expected}\n"
        assert "No such file or directory" in until(log("host-only"), 30, "host-only's output")

        def waiting() -> Any:
            statuses = core.read_namespaced_pod("no-entrypoint", ns).status.container_statuses or []
            return statuses and statuses[0].state.waiting

        state = until(waiting, 30, "no-entrypoint waiting")
        assert state.reason == "CreateContainerError"
        assert "has no entrypoint" in state.message


def _log(core: Any, ns: str, pod: str) -> str:
    try:
        return str(core.read_namespaced_pod_log(pod, ns))
    except client.ApiException:
        return ""
