"""meta.k8s.io/v1 Table responses for `kubectl get`, with the real server's columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netlab.api.meta import age
from netlab.contract import JSONDict


def _col(name: str, type_: str, description: str, priority: int = 0, fmt: str = "") -> JSONDict:
    return {
        "name": name,
        "type": type_,
        "format": fmt,
        "description": description,
        "priority": priority,
    }


_NAME = _col("Name", "string", "Name must be unique within a namespace.", fmt="name")
_AGE = _col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
)

COLUMNS: dict[str, list[JSONDict]] = {
    "pods": [
        _NAME,
        _col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
        _col("Status", "string", "The aggregate status of the containers in this pod."),
        _col(
            "Restarts",
            "string",
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        _AGE,
        _col(
            "IP",
            "string",
            "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            1,
        ),
        _col(
            "Node", "string", "NodeName is a request to schedule this pod onto a specific node.", 1
        ),
        _col(
            "Nominated Node",
            "string",
            "nominatedNodeName is set only when this pod preempts other pods on the node.",
            1,
        ),
        _col(
            "Readiness Gates",
            "string",
            "If specified, all readiness gates will be evaluated for pod readiness.",
            1,
        ),
    ],
    "nodes": [
        _NAME,
        _col("Status", "string", "The status of the node"),
        _col("Roles", "string", "The roles of the node"),
        _AGE,
        _col("Version", "string", "Kubelet Version reported by the node."),
        _col("Internal-IP", "string", "List of internal IPs of the node.", 1),
        _col("External-IP", "string", "List of external IPs of the node.", 1),
        _col(
            "OS-Image",
            "string",
            "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            1,
        ),
        _col(
            "Kernel-Version",
            "string",
            "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            1,
        ),
        _col(
            "Container-Runtime",
            "string",
            "Container runtime version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            1,
        ),
    ],
    "namespaces": [_NAME, _col("Status", "string", "The status of the namespace"), _AGE],
    "configmaps": [_NAME, _col("Data", "string", "Data contains the configuration data."), _AGE],
    "serviceaccounts": [
        _NAME,
        _col(
            "Secrets",
            "string",
            'Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a "kubernetes.io/enforce-mountable-secrets" annotation set to "true". This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret',
        ),
        _AGE,
    ],
    "services": [
        _NAME,
        _col("Type", "string", "type determines how the Service is exposed."),
        _col("Cluster-IP", "string", "clusterIP is the IP address of the service."),
        _col(
            "External-IP",
            "string",
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        _col("Port(s)", "string", "The list of ports that are exposed by this service."),
        _AGE,
        _col(
            "Selector",
            "string",
            "Route service traffic to pods with label keys and values matching this selector.",
            1,
        ),
    ],
    "endpointslices": [
        _NAME,
        _col(
            "AddressType",
            "string",
            "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name.",
        ),
        _col(
            "Ports",
            "string",
            'ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. When ports is empty, it indicates that there are no defined ports. When a port is defined with a nil port value, it indicates "all ports". Each slice may include a maximum of 100 ports.',
        ),
        _col(
            "Endpoints",
            "string",
            "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.",
        ),
        _AGE,
    ],
    "events": [
        _col("Last Seen", "string", "Time of the last occurrence."),
        _col(
            "Type",
            "string",
            "Type of this event (Normal, Warning), new types could be added in the future.",
        ),
        _col(
            "Reason",
            "string",
            "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
        ),
        _col("Object", "string", "The object that this event is about."),
        _col("Message", "string", "A human-readable description of the status of this operation."),
    ],
}
COLUMNS["networkpolicies"] = [
    _NAME,
    _col(
        "Pod-Selector",
        "string",
        "podSelector selects the pods to which this NetworkPolicy object applies. The array of "
        "ingress rules is applied to any pods selected by this field. Multiple network policies "
        "can select the same set of pods. In this case, the ingress rules for each are combined "
        "additively. This field is NOT optional and follows standard label selector semantics. "
        "An empty podSelector matches all pods in this namespace.",
    ),
    _AGE,
]
GENERIC = [_NAME, _AGE]


def _pod_row(pod: JSONDict) -> list[Any]:
    spec, status = pod.get("spec", {}), pod.get("status", {})
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for index, cs in enumerate(status.get("initContainerStatuses") or []):
        state = cs.get("state") or {}
        if state.get("terminated", {}).get("exitCode", 0) == 0 and "terminated" in state:
            continue
        waiting = state.get("waiting", {}).get("reason")
        reason = (
            f"Init:{waiting}"
            if waiting and waiting != "PodInitializing"
            else f"Init:{index}/{len(spec.get('initContainers') or [])}"
        )
        break
    else:
        for cs in reversed(statuses):
            state = cs.get("state") or {}
            if state.get("waiting", {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                term = state["terminated"]
                reason = term.get("reason") or (
                    f"Signal:{term['signal']}"
                    if term.get("signal")
                    else f"ExitCode:{term.get('exitCode')}"
                )
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        pod["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        str(restarts),
        age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _node_row(node: JSONDict) -> list[Any]:
    status = node.get("status", {})
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if node.get("spec", {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    addresses = status.get("addresses") or []
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        return next((a["address"] for a in addresses if a.get("type") == kind), "<none>")

    return [
        node["metadata"]["name"],
        state,
        ",".join(r for r in roles if r) or "<none>",
        age(node["metadata"].get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _service_row(service: JSONDict) -> list[Any]:
    """kubectl's printService: first cluster IP, external IPs, port/protocol list, selector."""
    spec = service.get("spec", {})
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    external = list(spec.get("externalIPs") or [])
    if spec.get("type") == "LoadBalancer":
        ingress = service.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        external += [i.get("ip") or i.get("hostname") or "" for i in ingress]
        external = external or ["<pending>"]
    elif spec.get("type") == "ExternalName":
        external = [spec.get("externalName", "")]
    ports = []
    for port in spec.get("ports") or []:
        text = f"{port.get('port')}/{port.get('protocol', 'TCP')}"
        if port.get("nodePort"):
            text = f"{port.get('port')}:{port['nodePort']}/{port.get('protocol', 'TCP')}"
        ports.append(text)
    selector = spec.get("selector") or {}
    return [
        service["metadata"]["name"],
        spec.get("type", "ClusterIP"),
        cluster_ips[0] if cluster_ips else "<none>",
        ",".join(external) or "<none>",
        ",".join(ports) or "<none>",
        age(service["metadata"].get("creationTimestamp")),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


def _list_with_more(items: list[str], limit: int = 3) -> str:
    """kubectl's listWithMoreString: the first ``limit`` items, "+ N more...", or <unset>."""
    text = ",".join(items[:limit])
    if len(items) > limit:
        return f"{text} + {len(items) - limit} more..."
    return text or "<unset>"


def _endpoint_slice_row(endpoint_slice: JSONDict) -> list[Any]:
    """printEndpointSlice: name, address type, ports and endpoints (three of each at most)."""
    ports = [
        str(p["port"]) if p.get("port") is not None else "<unset>"
        for p in endpoint_slice.get("ports") or []
    ]
    addresses = [
        address
        for endpoint in endpoint_slice.get("endpoints") or []
        for address in endpoint.get("addresses") or []
    ]
    return [
        endpoint_slice["metadata"]["name"],
        endpoint_slice.get("addressType", ""),
        _list_with_more(ports),
        _list_with_more(addresses),
        age(endpoint_slice["metadata"].get("creationTimestamp")),
    ]


def _event_row(event: JSONDict) -> list[Any]:
    involved = event.get("involvedObject", {})
    return [
        age(event.get("lastTimestamp") or event["metadata"].get("creationTimestamp")),
        event.get("type", ""),
        event.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        event.get("message", ""),
    ]


def format_label_selector(selector: JSONDict | None) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key, ``k=v``, ``k in (a,b)``,
    ``k notin (a,b)``, ``k``, ``!k``; ``<none>`` when empty."""
    selector = selector or {}
    parts: list[tuple[str, str]] = [
        (str(key), f"{key}={value}") for key, value in (selector.get("matchLabels") or {}).items()
    ]
    for requirement in selector.get("matchExpressions") or []:
        key = str(requirement.get("key", ""))
        values = ",".join(sorted(str(v) for v in requirement.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(str(requirement.get("operator")), "<error>")
        parts.append((key, text))
    return ",".join(text for _, text in sorted(parts, key=lambda p: p[0])) or "<none>"


_ROWS: dict[str, Callable[[JSONDict], list[Any]]] = {
    "pods": _pod_row,
    "nodes": _node_row,
    "namespaces": lambda ns: [
        ns["metadata"]["name"],
        ns.get("status", {}).get("phase", ""),
        age(ns["metadata"].get("creationTimestamp")),
    ],
    "configmaps": lambda cm: [
        cm["metadata"]["name"],
        len(cm.get("data") or {}) + len(cm.get("binaryData") or {}),
        age(cm["metadata"].get("creationTimestamp")),
    ],
    "events": _event_row,
    "services": _service_row,
    "endpointslices": _endpoint_slice_row,
    "networkpolicies": lambda policy: [
        policy["metadata"]["name"],
        format_label_selector((policy.get("spec") or {}).get("podSelector")),
        age(policy["metadata"].get("creationTimestamp")),
    ],
    "serviceaccounts": lambda sa: [
        sa["metadata"]["name"],
        len(sa.get("secrets") or []),
        age(sa["metadata"].get("creationTimestamp")),
    ],
}


def _generic_row(obj: JSONDict) -> list[Any]:
    return [obj["metadata"]["name"], age(obj["metadata"].get("creationTimestamp"))]


def _row_object(obj: JSONDict, include: str) -> JSONDict | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(
    resource: str, objects: list[JSONDict], resource_version: str, include: str = "Metadata"
) -> JSONDict:
    """A Table for ``objects``; ``include`` is the includeObject parameter (None|Metadata|Object)."""
    build = _ROWS.get(resource, _generic_row)
    rows = []
    for obj in objects:
        row: JSONDict = {"cells": build(obj)}
        included = _row_object(obj, include)
        if included is not None:
            row["object"] = included
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": COLUMNS.get(resource, GENERIC),
        "rows": rows,
    }


def wants_table(accept: str) -> bool:
    """True when the Accept header asks for as=Table;g=meta.k8s.io;v=v1 (first choice)."""
    for media in accept.split(","):
        params = {
            p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip()
            for p in media.split(";")[1:]
            if "=" in p
        }
        if (
            params.get("as") == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") == "v1"
        ):
            return True
        if media.split(";")[0].strip() in ("application/json", "*/*") and "as" not in params:
            return False
    return False
