"""A pod's volumes on disk, as kubelet's volume manager prepares them: emptyDir (a directory,
or a tmpfs for ``medium: Memory``) and configMap (the keys written as files), under the pod's
directory; the containers bind-mount them (``containers.container_config``).

The ``unshared-emptydir`` fault gives each container its own copy of every emptyDir.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netlab.contract import ConfigMapLookup
from netlab.dataplane.runtime import mount_points_under, mount_tmpfs, unmount
from netlab.kubelet.errors import ContainerConfigError
from netlab.spec import LabSpec

UNSHARED_EMPTYDIR_FAULT = "unshared-emptydir"


class PodVolumes:
    """A pod's emptyDir and configMap volumes on disk under its pod dir."""

    def __init__(
        self,
        spec: LabSpec,
        pod: Mapping[str, Any],
        directory: Path,
        configmaps: ConfigMapLookup,
    ) -> None:
        self.spec = spec
        self.pod = pod
        self.root = directory / "_volumes"  # "_": never a container name (DNS label)
        self.configmaps = configmaps
        self.namespace = str(pod.get("metadata", {}).get("namespace", "default"))
        self.volumes: dict[str, Mapping[str, Any]] = {
            str(v["name"]): v for v in pod.get("spec", {}).get("volumes") or []
        }
        self.unshared = UNSHARED_EMPTYDIR_FAULT in spec.faults

    def _containers(self) -> list[str]:
        spec = self.pod.get("spec", {})
        return [
            str(c["name"])
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        ]

    def prepare(self) -> None:
        """Create every volume (raises ContainerConfigError for an unusable one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, volume in self.volumes.items():
            if "emptyDir" in volume:
                medium = (volume.get("emptyDir") or {}).get("medium", "")
                copies = [f"{name}@{c}" for c in self._containers()] if self.unshared else [name]
                for copy in copies:
                    path = self.root / copy
                    if medium == "Memory":
                        mount_tmpfs(path)
                    else:
                        path.mkdir(parents=True, exist_ok=True)
                        path.chmod(0o777)  # kubelet's emptyDir mode
            elif "configMap" in volume:
                self._write_configmap(name, volume["configMap"])
            else:
                kinds = sorted(set(volume) - {"name"})
                raise ContainerConfigError(
                    "CreateContainerConfigError", f"volume {name}: unsupported type {kinds}"
                )

    def _write_configmap(self, name: str, source: Mapping[str, Any]) -> None:
        data = self.configmaps(self.namespace, str(source.get("name", "")))
        if data is None:
            if source.get("optional"):
                data = {}
            else:
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f'configmap "{source.get("name")}" not found',
                )
        default_mode = int(source.get("defaultMode", 0o644))
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        items = source.get("items")
        entries = (
            [(str(i["key"]), str(i["path"]), int(i.get("mode", default_mode))) for i in items]
            if items
            else [(key, key, default_mode) for key in data]
        )
        for key, relative, mode in entries:
            if key not in data:
                if source.get("optional"):
                    continue
                raise ContainerConfigError(
                    "CreateContainerConfigError", f"configmap references non-existent key {key}"
                )
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[key])
            target.chmod(mode)

    def host_path(self, volume: str, container: str) -> Path:
        if volume not in self.volumes:
            raise ContainerConfigError(
                "CreateContainerConfigError", f"volumeMount {volume} has no volume"
            )
        if self.unshared and "emptyDir" in self.volumes[volume]:
            return self.root / f"{volume}@{container}"
        return self.root / volume

    def is_configmap(self, volume: str) -> bool:
        return "configMap" in self.volumes.get(volume, {})

    def release(self) -> None:
        """Unmount memory-backed volumes (the files go with the pod dir)."""
        for mount_point in mount_points_under(self.root):
            unmount(mount_point)
