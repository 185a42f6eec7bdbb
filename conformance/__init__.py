"""k8s-netconform: conformance checks for the Kubernetes network model."""
