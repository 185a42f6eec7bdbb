"""The probe pods: the probe model (`model`), pod specs, deployment and pod lives (`deploy`),
the client that asks a pod's agent for exchanges (`client`), parallel calls, and the Service
model and its deployment.

May import: `conformance.kit.cluster`, `conformance.kit.base`, and
`conformance.probe_agent` (the program's protocol)."""
