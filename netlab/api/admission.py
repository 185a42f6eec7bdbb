"""Admission of written objects: JSON-schema validation, unknown fields, names, pod defaults.

Schemas are the ``kubernetes_validate`` package's JSON schemas for Kubernetes
``SCHEMA_VERSION`` (1.31, the version this lab reports), loaded once per kind. The strict
variant of a schema (``additionalProperties: false``) finds unknown fields; the normal variant
finds type, enum and required-field errors.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # via kubernetes_validate
from referencing import Registry, Resource

from netlab.api.errors import ApiError, invalid
from netlab.api.meta import generate_name, name_problem
from netlab.contract import JSONDict

SCHEMA_VERSION = "1.31.0"  # kubernetes_validate ships v1.28 .. v1.37; we serve v1.31

_REASONS = {
    "required": "FieldValueRequired",
    "type": "FieldValueTypeInvalid",
    "enum": "FieldValueNotSupported",
}


def _load(directory: str, filename: str) -> JSONDict:
    root = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    data: JSONDict = json.loads(root.joinpath(directory, filename).read_text())
    return data


# Kinds of named API groups: their schema files carry the group (kubernetes-json-schema names).
_SCHEMA_FILES = {
    "EndpointSlice": "endpointslice-discovery-v1.json",
    "NetworkPolicy": "networkpolicy-networking-v1.json",
}


@cache
def _validator(kind: str, strict: bool) -> jsonschema.protocols.Validator:
    directory = f"v{SCHEMA_VERSION}-local" + ("-strict" if strict else "")
    schema = _load(directory, _SCHEMA_FILES.get(kind, f"{kind.lower()}-v1.json"))
    definitions = _load(directory, "_definitions.json")
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    registry = Resource.from_contents(schema) @ registry
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(
        schema, registry=registry
    )
    return validator


def field_path(parts: Any) -> str:
    """jsonschema's deque path as the API writes it: spec.containers[0].name."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def unknown_fields(kind: str, obj: JSONDict) -> list[tuple[str, JSONDict, str]]:
    """Fields the schema does not declare: (path like "spec.foo", the dict holding it, key).
    jsonschema hands out the very sub-dicts of ``obj``, so the holder can drop the key."""
    found: dict[str, tuple[str, JSONDict, str]] = {}
    for error in _validator(kind, True).iter_errors(obj):
        if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
            continue
        declared = set(error.schema.get("properties", {}))
        prefix = field_path(error.absolute_path)
        for key in error.instance:
            if key not in declared:
                path = f"{prefix}.{key}" if prefix else str(key)
                found[path] = (path, error.instance, key)
    return [found[p] for p in sorted(found)]


def schema_causes(kind: str, obj: JSONDict) -> list[JSONDict]:
    causes = []
    for error in _validator(kind, False).iter_errors(obj):
        path = field_path(error.absolute_path)
        message = error.message
        if error.validator == "required" and isinstance(error.validator_value, list):
            missing = [k for k in error.validator_value if k not in (error.instance or {})]
            path = ".".join(p for p in (path, *missing[:1]) if p)
            message = "Required value"
        elif error.validator == "type":
            message = f"Invalid value: {json.dumps(error.instance)[:80]}: {error.message}"
        causes.append(
            {
                "reason": _REASONS.get(str(error.validator), "FieldValueInvalid"),
                "message": message,
                "field": path,
            }
        )
    return causes


def drop_nulls(value: Any) -> Any:
    """What Go's decoder makes of JSON nulls in a request: absent fields (and list items)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    return value


def check_fields(kind: str, obj: JSONDict, directive: str) -> list[str]:
    """Apply fieldValidation (Strict, Warn, Ignore); returns warnings for the response header."""
    found = unknown_fields(kind, obj)
    if not found:
        return []
    unknown = [path for path, _, _ in found]
    if directive == "Strict":
        # The real decoder's words (a 400, not a 422): "strict decoding error: unknown field".
        listing = ", ".join(f'unknown field "{p}"' for p in unknown)
        raise ApiError(
            400,
            f'{kind} in version "v1" cannot be handled as a {kind}: strict decoding error: {listing}',
        )
    for _, holder, key in found:  # what the API does for Ignore and Warn: drop them
        holder.pop(key, None)
    return [] if directive == "Ignore" else [f'unknown field "{p}"' for p in unknown]


def validate(kind: str, obj: JSONDict, *, label_name: bool, group: str = "") -> None:
    """422 Invalid when the schema, the name or (pods) the containers are wrong."""
    name = str(
        obj.get("metadata", {}).get("name") or obj.get("metadata", {}).get("generateName") or ""
    )
    causes = schema_causes(kind, obj)
    real_name = obj.get("metadata", {}).get("name")
    if isinstance(real_name, str):
        problem = name_problem(real_name, label=label_name)
        if problem:
            causes.append(
                {
                    "reason": "FieldValueInvalid",
                    "message": f'Invalid value: "{real_name}": {problem}',
                    "field": "metadata.name",
                }
            )
    if kind == "Pod" and not causes:
        causes.extend(_pod_causes(obj))
    if causes:
        raise invalid(kind, name, causes, group)


def _pod_causes(pod: JSONDict) -> list[JSONDict]:
    spec = pod.get("spec") or {}
    causes: list[JSONDict] = []
    if not spec.get("containers"):
        causes.append(
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.containers",
            }
        )
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{index}]"
            cname = container.get("name", "")
            problem = name_problem(cname, label=True)
            if problem:
                causes.append(
                    {
                        "reason": "FieldValueInvalid",
                        "message": f'Invalid value: "{cname}": {problem}',
                        "field": f"{where}.name",
                    }
                )
            elif cname in seen:
                causes.append(
                    {
                        "reason": "FieldValueDuplicate",
                        "message": f'Duplicate value: "{cname}"',
                        "field": f"{where}.name",
                    }
                )
            seen.add(cname)
            if not container.get("image"):
                causes.append(
                    {
                        "reason": "FieldValueRequired",
                        "message": "Required value",
                        "field": f"{where}.image",
                    }
                )
    return causes


def assign_name(obj: JSONDict, kind: str) -> str:
    """metadata.name, generated from generateName when absent (422 when neither is given)."""
    meta = obj.setdefault("metadata", {})
    if not meta.get("name"):
        prefix = meta.get("generateName")
        if not prefix:
            raise invalid(
                kind,
                "",
                [
                    {
                        "reason": "FieldValueRequired",
                        "message": "Required value: name or generateName is required",
                        "field": "metadata.name",
                    }
                ],
            )
        meta["name"] = generate_name(str(prefix))
    return str(meta["name"])


# Defaults, as the API server's defaulting functions set them for core/v1 objects.
_NOT_READY_TOLERATIONS = [
    {
        "key": f"node.kubernetes.io/{what}",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    }
    for what in ("not-ready", "unreachable")
]


def _probe_defaults(probe: JSONDict) -> None:
    for key, value in (
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ):
        probe.setdefault(key, value)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def _container_defaults(container: JSONDict) -> None:
    image = str(container.get("image", ""))
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    latest = not tagged or image.endswith(":latest")
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(key), dict):
            _probe_defaults(container[key])


def qos_class(spec: JSONDict) -> str:
    containers = spec.get("containers") or []
    resources_seen = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources_seen):
        return "BestEffort"
    guaranteed = all(
        set(r.get("limits") or {}) >= {"cpu", "memory"}
        and all(
            (r.get("requests") or r.get("limits") or {}).get(k) == r["limits"][k]
            for k in ("cpu", "memory")
        )
        for r in resources_seen
    )
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod(pod: JSONDict) -> JSONDict:
    """Pod defaults so `kubectl get pod -o yaml` looks like a real cluster's."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    keys = {t.get("key") for t in tolerations}
    tolerations.extend(t for t in copy.deepcopy(_NOT_READY_TOLERATIONS) if t["key"] not in keys)
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            _container_defaults(container)
    for volume in spec.get("volumes") or []:
        for source in ("configMap", "secret"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
    return pod


# --- Pod Security admission (the enforce label of the pod's namespace) ------------------------

PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PSA_VERSION_LABEL = "pod-security.kubernetes.io/enforce-version"
# Pod Security Standards, baseline: capabilities a container may add.
_BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def _quoted(names: list[str]) -> str:
    return ", ".join(json.dumps(name) for name in names)


def _containers_phrase(names: list[str]) -> str:
    return f"{'container' if len(names) == 1 else 'containers'} {_quoted(names)}"


def _capability(name: object) -> str:
    return str(name).upper().removeprefix("CAP_")


def _pod_security_violations(spec: JSONDict, restricted: bool) -> list[str]:
    """The violated checks of a level, ``reason (detail)`` each, in pod-security-admission's
    order (by check ID) and words. A subset: capabilities, host namespaces, privileged,
    and for restricted also privilege escalation, non-root, runAsUser and seccomp."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    pod_context = spec.get("securityContext") or {}

    def context(container: JSONDict) -> JSONDict:
        return container.get("securityContext") or {}

    def names(predicate: Any) -> list[str]:
        return [str(c.get("name")) for c in containers if predicate(c)]

    found: list[str] = []
    if restricted:
        escalating = names(lambda c: context(c).get("allowPrivilegeEscalation") is not False)
        if escalating:
            found.append(
                f"allowPrivilegeEscalation != false ({_containers_phrase(escalating)} must set "
                "securityContext.allowPrivilegeEscalation=false)"
            )
    added = {
        str(c.get("name")): [
            _capability(cap) for cap in (context(c).get("capabilities") or {}).get("add") or []
        ]
        for c in containers
    }
    if restricted:
        not_dropping = names(
            lambda c: (
                "ALL"
                not in [
                    _capability(cap)
                    for cap in (context(c).get("capabilities") or {}).get("drop") or []
                ]
            )
        )
        forbidden = sorted({cap for caps in added.values() for cap in caps} - {"NET_BIND_SERVICE"})
        adding = [name for name, caps in added.items() if set(caps) - {"NET_BIND_SERVICE"}]
        parts = []
        if not_dropping:
            parts.append(
                f'{_containers_phrase(not_dropping)} must set securityContext.capabilities.drop=["ALL"]'
            )
        if adding:
            parts.append(
                f"{_containers_phrase(adding)} must not include {_quoted(forbidden)} in "
                "securityContext.capabilities.add"
            )
        if parts:
            found.append(f"unrestricted capabilities ({'; '.join(parts)})")
    else:
        forbidden = sorted(
            {cap for caps in added.values() for cap in caps} - _BASELINE_CAPABILITIES
        )
        adding = [name for name, caps in added.items() if set(caps) - _BASELINE_CAPABILITIES]
        if adding:
            found.append(
                f"non-default capabilities ({_containers_phrase(adding)} must not include "
                f"{_quoted(forbidden)} in securityContext.capabilities.add)"
            )
    host = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    if host:
        found.append(f"host namespaces ({', '.join(host)})")
    privileged = names(lambda c: context(c).get("privileged") is True)
    if privileged:
        found.append(
            f"privileged ({_containers_phrase(privileged)} must not set "
            "securityContext.privileged=true)"
        )
    if not restricted:
        return found
    if pod_context.get("runAsNonRoot") is not True:
        unset = names(lambda c: context(c).get("runAsNonRoot") is not True)
        if unset:
            found.append(
                f"runAsNonRoot != true (pod or {_containers_phrase(unset)} must set "
                "securityContext.runAsNonRoot=true)"
            )
    root = names(lambda c: context(c).get("runAsUser") == 0)
    if pod_context.get("runAsUser") == 0 or root:
        who = "pod" if pod_context.get("runAsUser") == 0 else _containers_phrase(root)
        found.append(f"runAsUser=0 ({who} must not set runAsUser=0)")
    allowed_seccomp = ("RuntimeDefault", "Localhost")
    if (pod_context.get("seccompProfile") or {}).get("type") not in allowed_seccomp:
        unset = names(
            lambda c: (context(c).get("seccompProfile") or {}).get("type") not in allowed_seccomp
        )
        if unset:
            found.append(
                f"seccompProfile (pod or {_containers_phrase(unset)} must set "
                'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
            )
    return found


def check_pod_security(namespace: JSONDict | None, pod: JSONDict, requested_name: str) -> None:
    """403 Forbidden, in the PodSecurity admission plugin's words, when the pod violates the
    level the namespace's ``pod-security.kubernetes.io/enforce`` label enforces (baseline or
    restricted; privileged, none or an unknown level: anything goes, as the lab has no
    cluster-wide default)."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(PSA_ENFORCE_LABEL)
    if level not in ("baseline", "restricted"):
        return
    violations = _pod_security_violations(pod.get("spec") or {}, restricted=level == "restricted")
    if not violations:
        return
    name = requested_name or "Unknown"
    version = labels.get(PSA_VERSION_LABEL) or "latest"
    raise ApiError(
        403,
        f"pods {json.dumps(name)} is forbidden: violates PodSecurity "
        f'"{level}:{version}": {", ".join(violations)}',
        "Forbidden",
        {"name": name, "kind": "pods"},
    )
