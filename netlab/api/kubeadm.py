"""``kube-system/kubeadm-config``, as a kubeadm cluster publishes it: the ``ClusterConfiguration``
kubeadm init was given, whose ``networking`` section names the service and pod ranges. Clients
read the service range there on clusters that serve no ServiceCIDR objects (before 1.33), as
the conformance suite does."""

from __future__ import annotations

import yaml

from netlab.api.discovery import GIT_VERSION
from netlab.api.meta import new_uid, now_rfc3339
from netlab.contract import JSONDict
from netlab.spec import LabSpec


def cluster_configuration(spec: LabSpec) -> JSONDict:
    """The lab's ClusterConfiguration (kubeadm.k8s.io/v1beta4), ranges comma-joined primary
    family first, as kubeadm takes them for dual-stack."""
    return {
        "apiServer": {},
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "certificatesDir": "/etc/kubernetes/pki",
        "clusterName": spec.name,
        "controllerManager": {},
        "dns": {},
        "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
        "imageRepository": "registry.k8s.io",
        "kind": "ClusterConfiguration",
        "kubernetesVersion": GIT_VERSION.split("-")[0],
        "networking": {
            "dnsDomain": "cluster.local",
            "podSubnet": ",".join(spec.cluster_cidrs),
            "serviceSubnet": ",".join(spec.service_cidrs),
        },
        "proxy": {},
        "scheduler": {},
    }


def kubeadm_config(spec: LabSpec) -> JSONDict:
    """The ConfigMap ``kube-system/kubeadm-config``."""
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": "kubeadm-config",
            "namespace": "kube-system",
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
        },
        "data": {
            "ClusterConfiguration": yaml.safe_dump(
                cluster_configuration(spec), sort_keys=True, default_flow_style=False
            )
        },
    }
