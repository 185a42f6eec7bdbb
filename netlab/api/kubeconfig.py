"""A kubeconfig for the lab: one cluster, user and context, all named netlab-<lab>."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml


def kubeconfig_text(lab: str, server: str, token: str, ca_pem: bytes | None = None) -> str:
    name = f"netlab-{lab}"
    cluster: dict[str, str] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}
        ],
        "current-context": name,
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(
    path: Path, lab: str, server: str, token: str, ca_pem: bytes | None = None
) -> None:
    """Write it with mode 0600 from the start (it holds the bearer token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(kubeconfig_text(lab, server, token, ca_pem))
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
