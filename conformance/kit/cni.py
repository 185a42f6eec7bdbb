"""Which CNI a cluster runs, as far as its DaemonSets tell: the well-known agents' DaemonSets
(calico-node, cilium, kube-flannel-ds...) name it; anything else is ``unknown``. Pure: the
DaemonSets come from one list request in `conformance.kit.cluster.detect_cni`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conformance.kit.report import CNI_UNKNOWN

#: Well-known CNI DaemonSets (the name, or its prefix before ``-``) -> the CNI's name.
CNI_DAEMONSETS = (
    ("calico-node", "Calico"),
    ("cilium", "Cilium"),
    ("kube-flannel-ds", "Flannel"),
    ("weave-net", "Weave Net"),
    ("antrea-agent", "Antrea"),
    ("kindnet", "kindnet"),
    ("kube-router", "kube-router"),
    ("aws-node", "Amazon VPC CNI"),
    ("azure-cni", "Azure CNI"),
    ("azure-cns", "Azure CNI"),
    ("canal", "Canal"),
    ("kube-ovn-cni", "Kube-OVN"),
    ("ovnkube-node", "OVN-Kubernetes"),
)
SYSTEM_NAMESPACE = "kube-system"


def _meta(daemonset: Any) -> tuple[str, str]:
    meta = getattr(daemonset, "metadata", None)
    return (str(getattr(meta, "namespace", "") or ""), str(getattr(meta, "name", "") or ""))


def _image(daemonset: Any) -> str | None:
    spec = getattr(daemonset, "spec", None)
    template = getattr(spec, "template", None)
    pod_spec = getattr(template, "spec", None)
    containers = getattr(pod_spec, "containers", None) or []
    return str(containers[0].image) if containers and containers[0].image else None


def recognise_cni(daemonsets: Iterable[Any]) -> tuple[str, str]:
    """(CNI, evidence) from DaemonSets (client models): the first well-known one, kube-system's
    before other namespaces', e.g. ``("Cilium", "DaemonSet kube-system/cilium, image
    quay.io/cilium/cilium:v1.15.1")``; ``("unknown", "no well-known CNI DaemonSet among N
    DaemonSets")`` otherwise."""
    listed = sorted(daemonsets, key=lambda d: _meta(d)[0] != SYSTEM_NAMESPACE)
    for daemonset in listed:
        namespace, name = _meta(daemonset)
        for known, cni in CNI_DAEMONSETS:
            if name == known or name.startswith(known + "-"):
                image = _image(daemonset)
                shown = f", image {image}" if image else ""
                return cni, f"DaemonSet {namespace}/{name}{shown}"
    return CNI_UNKNOWN, f"no well-known CNI DaemonSet among {len(listed)} DaemonSets"
