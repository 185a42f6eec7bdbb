"""The labels the suite puts on what it creates (namespaces, pods, Services): who manages it and
which run it belongs to. What `--cleanup-stale` and a run's cleanup select on."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "k8s-netconform"
RUN_LABEL = "netconform/run"
