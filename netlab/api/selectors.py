"""Label and field selectors, parsed as the API server parses them (400 on a bad one)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from netlab.api.errors import ApiError
from netlab.contract import JSONDict

_KEY = re.compile(r"^([a-z0-9A-Z.\-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Field selectors each resource supports, as paths into the object.
FIELD_PATHS: dict[str, set[str]] = {
    "pods": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "events": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "namespaces": {"status.phase"},
    "nodes": {"spec.unschedulable"},
    "configmaps": set(),
    "services": {"spec.clusterIP", "spec.type"},
    "endpointslices": set(),
}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too
        return not present or labels[self.key] not in self.values


LabelSelector = tuple[Requirement, ...]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _check_key(key: str, whole: str) -> str:
    key = key.strip()
    if not key or len(key) > 316 or not _KEY.match(key):
        raise ApiError(400, f"unable to parse requirement: invalid label key {key!r} in {whole!r}")
    return key


def _check_value(value: str, whole: str) -> str:
    value = value.strip()
    if len(value) > 63 or not _VALUE.match(value):
        raise ApiError(
            400, f"unable to parse requirement: invalid label value {value!r} in {whole!r}"
        )
    return value


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h`; raises ApiError 400 when malformed."""
    if not text or not text.strip():
        return ()
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise ApiError(
                400, f"unable to parse requirement: found '', expected: identifier in {text!r}"
            )
        set_match = _SET_RE.match(part)
        if set_match:
            key = _check_key(set_match.group(1), text)
            values = tuple(_check_value(v, text) for v in set_match.group(3).split(","))
            requirements.append(Requirement(key, set_match.group(2), values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append(
                Requirement(_check_key(key, text), "!=", (_check_value(value, text),))
            )
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            requirements.append(
                Requirement(_check_key(key, text), "=", (_check_value(value, text),))
            )
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:], text), "!"))
        else:
            if any(c in part for c in "()<> "):
                raise ApiError(400, f"unable to parse requirement: unexpected {part!r} in {text!r}")
            requirements.append(Requirement(_check_key(part, text), "exists"))
    return tuple(requirements)


def labels_match(selector: LabelSelector, obj: JSONDict) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in selector)


FieldSelector = tuple[tuple[str, bool, str], ...]  # (path, equal?, value)


def parse_field_selector(text: str | None, resource: str) -> FieldSelector:
    """Parse `a=b,c!=d` against the fields ``resource`` supports; ApiError 400 otherwise."""
    if not text or not text.strip():
        return ()
    supported = {"metadata.name", "metadata.namespace"} | FIELD_PATHS.get(resource, set())
    terms: list[tuple[str, bool, str]] = []
    for raw in re.split(r"(?<!\\),", text):
        part = raw.strip()
        equal = "!=" not in part
        separator = "!=" if not equal else "==" if "==" in part else "="
        if separator not in part:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{part}'")
        path, value = part.split(separator, 1)
        path = path.strip()
        if path not in supported:
            raise ApiError(400, f"field label not supported: {path}")
        terms.append((path, equal, value.replace("\\,", ",")))
    return tuple(terms)


# Boolean fields: the server selects on fmt.Sprint of the Go bool, so an unset one is "false".
BOOLEAN_FIELDS = frozenset({"spec.unschedulable", "spec.hostNetwork"})


def _field_value(obj: JSONDict, path: str) -> str:
    if path == "source":  # events: source.component
        return str(obj.get("source", {}).get("component") or "")
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if path in BOOLEAN_FIELDS and current is None:
        current = False
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)


def fields_match(selector: FieldSelector, obj: JSONDict) -> bool:
    return all((_field_value(obj, path) == value) == equal for path, equal, value in selector)


def match_all(obj: JSONDict) -> bool:
    """The matcher of an empty selector."""
    return True


def matcher(labels: LabelSelector, fields: FieldSelector) -> Callable[[JSONDict], bool]:
    if not labels and not fields:
        return match_all
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
