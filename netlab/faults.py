"""The lab's fault modes: each builds a cluster that breaks one rule of the network model.

A fault is a name in ``LabSpec.faults``; the data plane and the kubelet consult it where the
broken behaviour lives (iptables and link MTUs in node namespaces, IPAM config, the pod
runtime). Faults that name a node say which one; a lab too small or of the wrong IP family for
a fault is refused with one line (``topology.check_topology_faults``).
"""

from __future__ import annotations

FAULTS: dict[str, str] = {
    "snat-cross-node": "nodes masquerade pod traffic leaving the node (peer sees the node IP)",
    "snat-same-node": "the node bridge masquerades pod-to-pod traffic on the same node",
    "overlapping-pod-cidrs": "two nodes are given overlapping podCIDRs",
    "duplicate-pod-ip": "IPAM forgets its leases, so pods on a node share an IP",
    "ip-outside-node-cidr": "a node's IPAM hands out addresses outside its podCIDR",
    "split-netns": "containers after the first get their own network namespace, not the pod's",
    "unshared-emptydir": "each container gets its own copy of an emptyDir volume",
    "block-node-to-pod": "nodes drop traffic from their own address to local pods",
    "cross-node-blackhole": "pod traffic between nodes is dropped",
    "sandbox-reset": "a container restart gives the pod a new network namespace and IP",
    "wrong-self-ip": "the API reports a podIP that differs from the pod's own address",
    "udp-drop": "nodes drop UDP between pods",
    "one-way-pair-drop": (
        "node-1's pods cannot open flows to node-3's pods (node-2's on 2 nodes); the reverse works"
    ),
    "same-node-drop-last": "pod-to-pod traffic between pods of the last node is dropped",
    "host-to-remote-pods-blocked": (
        "node-2's own network stack (hostNetwork pods) cannot reach other nodes' pods"
    ),
    "pmtu-blackhole": (
        "node-2's uplink MTU is 1400 (pods 1500), ICMP too-big dropped: full-size packets "
        "between its pods and other nodes' vanish"
    ),
    "family-missing-on-node": (
        "node-2's IPAM gives its pods IPv4 addresses only (dual-stack labs only)"
    ),
    "no-hairpin": "pods' bridge ports have no hairpin mode: a pod cannot reach itself via its Service",
    "stale-endpoints": "the proxy ignores readiness: an unready pod stays in the Service rules",
    "nodeport-missing-on-node": "node-2 has no NodePort rules: NodePorts are not served there",
    "service-masquerade": (
        "pod-to-ClusterIP traffic is masqueraded: endpoints see a node address, not the pod's"
    ),
    "dns-wrong-address": "the cluster DNS answers Service names with a wrong address",
    "hostport-unmapped": "node-2's CNI config lacks portmap: hostPorts are not mapped there",
    "lossy-pair": (
        "20 % of the packets from node-2's pods to node-3's pods (node-1's to node-2's on 2 "
        "nodes) are dropped at random, one direction"
    ),
    "service-resets": (
        "30 % of new TCP connections to a Service (cluster IP, NodePort) are reset, on every node"
    ),
}


def describe_faults() -> str:
    """One line per fault, as `netlab faults` prints them."""
    width = max(map(len, FAULTS))
    return "\n".join(f"{name:<{width}}  {text}" for name, text in FAULTS.items())
