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
    "network-not-ready-on-node": (
        "node-2's network plugin is not ready: Ready=False (NetworkReady=false, "
        "NetworkPluginNotReady), not-ready taints, and no pod-network pod starts there"
    ),
    "no-hairpin": "pods' bridge ports have no hairpin mode: a pod cannot reach itself via its Service",
    "stale-endpoints": "the proxy ignores readiness: an unready pod stays in the Service rules",
    "nodeport-missing-on-node": "node-2 has no NodePort rules: NodePorts are not served there",
    "service-masquerade": (
        "pod-to-ClusterIP traffic is masqueraded: endpoints see a node address, not the pod's"
    ),
    "dns-wrong-address": "the cluster DNS answers Service names with a wrong address",
    "hostport-unmapped": "node-2's CNI config lacks portmap: hostPorts are not mapped there",
    "dns-blackhole": "every node drops DNS (port 53) from its pods: pods' resolver never answers",
    "sandbox-reset-same-ip": (
        "a container restart gives the pod a new network namespace with the same IP back"
    ),
    "netpol-ignored-on-node": "node-2 enforces no NetworkPolicy: its pods are never isolated",
    "netpol-egress-ignored": "egress rules are ignored: no pod is ever isolated for egress",
    "netpol-named-ports-unresolved": "named ports in policies match nothing",
    "netpol-except-ignored": "ipBlock except is ignored: the whole cidr is allowed",
    "netpol-namespace-selector-as-pod-selector": (
        "a peer's namespaceSelector is matched against pod labels of the policy's namespace"
    ),
    "netpol-peer-and-as-or": "a peer with podSelector and namespaceSelector matches either (OR)",
    "netpol-labels-not-followed": (
        "pods and namespaces are judged by the labels they had when the engine first saw them"
    ),
    "netpol-deleted-policy-enforced": "a deleted NetworkPolicy stays enforced",
    "netpol-replies-dropped": (
        "no conntrack shortcut: replies are judged as new traffic, so replies into (out of) "
        "isolated pods that the policies would not allow as new connections are dropped"
    ),
    # The cluster's edge (issue 24): the outside host, a namespace on the fabric.
    "edge-egress-blocked": (
        "node-2 drops its pods' new connections to anything outside the cluster: they cannot "
        "reach the outside host"
    ),
    "edge-nodeport-blocked": (
        "node-2 drops NodePort connections from outside the cluster (not a pod, not a node)"
    ),
    "edge-no-masquerade": (
        "node-2 does not masquerade its pods' traffic leaving the pod network: the outside "
        "host sees pod IPs it cannot answer"
    ),
    # Variants that break no rule: the suite must test, or skip for the named reason, and pass.
    "dns-service-renamed": (
        "not a fault: the cluster DNS Service is kube-system/rke2-coredns-rke2-coredns (as RKE2 "
        "names it), not kube-dns; pods' resolv.conf still names its address"
    ),
    "no-cluster-dns": (
        "not a fault: kubelets have no clusterDNS and no cluster DNS runs; ClusterFirst pods "
        "get the node's own resolv.conf (as realk8s)"
    ),
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
