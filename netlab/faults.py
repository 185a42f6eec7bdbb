"""The lab's fault modes: each builds a cluster that breaks one rule of the network model.

A fault is a name in ``LabSpec.faults``; the data plane and node agent consult it where the
broken behaviour lives (iptables in node namespaces, IPAM config, the pod runtime).
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
}


def describe_faults() -> str:
    """One line per fault, as `netlab faults` prints them."""
    width = max(map(len, FAULTS))
    return "\n".join(f"{name:<{width}}  {text}" for name, text in FAULTS.items())
