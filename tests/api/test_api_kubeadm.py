"""The lab publishes ``kube-system/kubeadm-config`` as a kubeadm cluster does: its
``ClusterConfiguration`` names the service and pod ranges the lab really uses."""

from __future__ import annotations

import yaml
from live_api import LiveServer

from netlab.api.kubeadm import cluster_configuration
from netlab.spec import LabSpec


def test_kubeadm_config_names_the_lab_ranges(live: LiveServer) -> None:
    config_map = live.core.read_namespaced_config_map("kubeadm-config", "kube-system")
    configuration = yaml.safe_load(config_map.data["ClusterConfiguration"])
    assert configuration["kind"] == "ClusterConfiguration"
    assert configuration["apiVersion"].startswith("kubeadm.k8s.io/")
    service = live.core.read_namespaced_service("kubernetes", "default")
    networking = configuration["networking"]
    # default/kubernetes holds the first address of the range kubeadm-config names.
    assert networking["serviceSubnet"] == "10.96.0.0/12"
    assert service.spec.cluster_ip == "10.96.0.1"
    assert networking["podSubnet"] == "10.244.0.0/16"


def test_dual_stack_ranges_are_comma_joined_primary_first() -> None:
    spec = LabSpec(name="dual", nodes=2, ip_family="dual")
    networking = cluster_configuration(spec)["networking"]
    assert networking["serviceSubnet"] == "10.96.0.0/12,fd00:10:96::/112"
    assert networking["podSubnet"] == "10.244.0.0/16,fd00:10:244::/56"
