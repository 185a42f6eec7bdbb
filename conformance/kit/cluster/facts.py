"""Facts about the cluster under test, as the report shows them (`ClusterFacts`): server
version, the nodes tested, podCIDRs, the Service range, IP families, the CNI. Pure data;
`conformance.kit.cluster.survey` gathers them."""

from __future__ import annotations

from dataclasses import dataclass

from conformance.kit.base.jsondata import JSONData

#: What the report says of a CNI it cannot recognise.
CNI_UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClusterFacts(JSONData):
    """Facts about the cluster under test, shown in JUnit properties and the JSON summary."""

    server_version: str
    node_count: int
    nodes_tested: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    service_cidr: str | None
    ip_families: tuple[str, ...]
    probe_image: str
    #: The CNI plugin, recognised by a well-known DaemonSet (``Cilium (kube-system/cilium,
    #: image ...)``), else ``unknown``; ``cni_evidence`` says what was looked at.
    cni: str = CNI_UNKNOWN
    cni_evidence: str = ""

    def junit_properties(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs for ``record_testsuite_property``, names ``netconform.*``."""
        return [
            ("netconform.server_version", self.server_version),
            ("netconform.node_count", str(self.node_count)),
            ("netconform.nodes_tested", ",".join(self.nodes_tested) or "none"),
            ("netconform.pod_cidrs", ",".join(self.pod_cidrs) or "none"),
            ("netconform.service_cidr", self.service_cidr or "unknown"),
            ("netconform.ip_families", ",".join(self.ip_families) or "unknown"),
            ("netconform.probe_image", self.probe_image),
            ("netconform.cni", self.cni),
        ]
