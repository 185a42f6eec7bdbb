"""netlab: a Docker-free multi-node Kubernetes test-bed cluster on one Linux machine."""
