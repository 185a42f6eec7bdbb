"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
patch for the simple cases (lists of named/typed items merged by that key)."""

from __future__ import annotations

import copy
from typing import Any

from netlab.api.errors import ApiError
from netlab.contract import JSONDict

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
SUPPORTED = (JSON_PATCH, MERGE, STRATEGIC)

# Lists the strategic merge patch merges by key rather than replacing (core/v1 patchMergeKey).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "conditions": "type",
    "imagePullSecrets": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ownerReferences": "uid",
    "finalizers": "",  # merged as a set
}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, list):
        return _merge_list(target, patch, field)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # $setElementOrder/..., $retainKeys: ordering hints, skipped
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


def _merge_list(target: Any, patch: list[Any], field: str) -> list[Any]:
    if field not in _MERGE_KEYS or not isinstance(target, list):
        return [copy.deepcopy(item) for item in patch if not _is_directive(item)]
    key = _MERGE_KEYS[field]
    if field == "ports" and any(isinstance(item, dict) and "port" in item for item in patch):
        key = "port"  # a Service's ports merge by port number, a container's by containerPort
    result = list(target)
    for item in patch:
        if not key:  # set semantics (finalizers)
            if item not in result:
                result.append(item)
            continue
        if not isinstance(item, dict) or key not in item:
            raise ApiError(400, f"map: missing merge key {key!r} in list {field!r}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and "$patch" in item


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(400, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, list):
            current = current[int(token)]
        elif isinstance(current, dict):
            current = current[token]
        else:
            raise KeyError(token)
    return current


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    return parent[int(tokens[-1])] if isinstance(parent, list) else parent[tokens[-1]]


def _remove(doc: Any, tokens: list[str]) -> Any:
    parent = _parent(doc, tokens)
    return parent.pop(int(tokens[-1])) if isinstance(parent, list) else parent.pop(tokens[-1])


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise IndexError(index)
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def json_patch(target: JSONDict, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise ApiError(400, "json patch must be a list of operations")
    doc: Any = copy.deepcopy(target)
    for op in operations:
        try:
            if not isinstance(op, dict):
                raise ValueError("operation is not an object")
            kind = op.get("op")
            tokens = _pointer(str(op.get("path", "")))
            if kind == "add":
                doc = _add(doc, tokens, copy.deepcopy(op["value"]))
            elif kind == "remove":
                _remove(doc, tokens)
            elif kind == "replace":
                _get(doc, tokens)  # must exist
                if tokens:
                    _remove(doc, tokens)
                doc = _add(doc, tokens, copy.deepcopy(op["value"]))
            elif kind in ("move", "copy"):
                source = _pointer(str(op.get("from", "")))
                value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
                doc = _add(doc, tokens, value)
            elif kind == "test":
                if _get(doc, tokens) != op.get("value"):
                    raise ApiError(
                        422,
                        f"the server rejected our request due to an error in our request: testing value {op.get('path')} failed",
                    )
            else:
                raise ValueError(f"Unexpected kind: {kind}")
        except ApiError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
            raise ApiError(
                422, f"the server rejected our request due to an error in our request: {error}"
            ) from None
    return doc


def apply_patch(content_type: str, target: JSONDict, body: Any) -> Any:
    """The patched object; 415 for a patch type we do not speak (server-side apply)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == MERGE:
        return merge_patch(target, body)
    if kind == STRATEGIC:
        return strategic_merge_patch(target, body)
    if kind == JSON_PATCH:
        return json_patch(target, body)
    raise ApiError(
        415,
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(SUPPORTED),
    )
