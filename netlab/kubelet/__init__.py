"""The lab's kubelet, split by job as upstream's ``pkg/kubelet``:

- ``kubelet.py``: ``Kubelet``, one node's pod lifecycle (sandbox, init and app containers,
  restarts with back-off, stop), implementing ``contract.KubeletAPI``;
- ``containers.py``: pod spec to ``ContainerConfig`` (env, downward API, capabilities,
  mounts) and the pod's /etc files (``kuberuntime``);
- ``volumes.py``: emptyDir and configMap volumes on disk;
- ``errors.py``: ``ContainerConfigError``, a container spec the kubelet cannot run (both
  builders raise it);
- ``prober.py``: readiness and liveness probes;
- ``status.py``: phase, conditions, container states, the IPs the API is told;
- ``logs.py``: container logs;
- ``pods.py``: what the kubelet tracks per pod and container.

Namespaces, CNI and runc are the data plane's (``netlab.dataplane``).
"""

from netlab.kubelet.kubelet import Kubelet

__all__ = ["Kubelet"]
