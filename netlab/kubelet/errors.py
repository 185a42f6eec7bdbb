"""The kubelet's error for a container spec it cannot run, shared by the container and the
volume builders (kubelet's ``kuberuntime`` and ``volumemanager`` both report through it)."""

from __future__ import annotations


class ContainerConfigError(ValueError):
    """A container spec this kubelet cannot run; ``reason`` is the kubelet waiting reason
    (``CreateContainerConfigError``, ``CreateContainerError``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
