"""One serialisation idiom for the kit's dataclasses: ``to_dict()`` and ``from_dict(raw)``.

Run-wide state crosses process boundaries (xdist workers, the run directory) and ends in
``summary.json`` as JSON. Rather than a hand-written pair of converters per class, a dataclass
inherits `JSONData` and its fields are converted from their type hints (nested `JSONData`,
tuples, mappings, optionals, plain JSON values), as lightkube's ``DataclassDictMixIn`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin

D = TypeVar("D", bound="JSONData")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(value: Any) -> Any:
    if isinstance(value, JSONData):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        return [_encode(v) for v in value]
    return value


def _decode(kind: Any, raw: Any) -> Any:
    if raw is None or kind is Any:
        return raw
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in get_args(kind) if k is not type(None)]
        return _decode(options[0], raw) if len(options) == 1 else raw
    if isinstance(kind, type) and issubclass(kind, JSONData):
        return kind.from_dict(raw)
    if origin is tuple:
        args = get_args(kind)
        item = args[0] if args else Any
        return tuple(_decode(item, v) for v in raw)
    if origin in (dict, Mapping, typing.Mapping):
        args = get_args(kind)
        item = args[1] if len(args) == 2 else Any
        return {str(k): _decode(item, v) for k, v in raw.items()}
    if kind is float and isinstance(raw, int):
        return float(raw)
    return raw


class JSONData:
    """Mixin for frozen dataclasses that travel as JSON: ``to_dict`` / ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of every field (tuples as lists, nested data as mappings)."""
        assert dataclasses.is_dataclass(self)
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[D], raw: Mapping[str, Any]) -> D:
        """The object `to_dict` described; fields missing from ``raw`` take their defaults."""
        assert dataclasses.is_dataclass(cls)
        if not isinstance(raw, Mapping):
            raise TypeError(f"{cls.__name__} from {type(raw).__name__}: a mapping is needed")
        hints = _field_types(cls)
        values = {
            f.name: _decode(hints[f.name], raw[f.name])
            for f in dataclasses.fields(cls)
            if f.name in raw
        }
        return cls(**values)
