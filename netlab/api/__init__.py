"""netlab control plane: a Kubernetes-compatible API server."""
