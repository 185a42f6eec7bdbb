"""What the probes exchange for the checks: targets and the sweep (`reachability`), prefetch,
Service targets, sandboxes, the readiness flip, the edge pass and the port conflict. Each
produces outcomes; none judges them (that is `conformance.kit.verdicts`).

May import: `conformance.kit.probes`, `conformance.kit.cluster`, `conformance.kit.base`,
`conformance.probe_agent`."""
