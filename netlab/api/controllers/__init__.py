"""Controllers: the control plane's reconcilers, each keeping one kind of object as a real
cluster's kube-controller-manager (or kube-apiserver's own controllers) would: EndpointSlices
from Services and pods, the root CA ConfigMap in every namespace, `default` ServiceAccounts,
the initial objects and ``default/kubernetes``, namespace termination, and pod eviction with
the disruption faults. They use the store and the cluster's parts (``netlab.api.cluster``);
nothing here imports the resources' rules or the HTTP layer."""
