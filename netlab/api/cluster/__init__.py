"""The cluster's moving parts behind the API: the node registry (each node's kubelet and its
Node object), the scheduler, the pod lifecycle (start on the kubelet, status reports, graceful
deletion), events, and the background tasks they run. Each part is one module that imports
only the store and the parts below it; ``netlab.api.controlplane`` puts them together."""
