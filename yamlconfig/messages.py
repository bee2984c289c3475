"""Plain messages for pydantic validation errors, written for the author of a YAML file.

``describe`` turns one pydantic error into the message after ``FILE:LINE: key.path:``: it names
the value given (``'block' is not one of 'reject', 'wait'``), suggests the key meant by an unknown
one (``unknown key, did you mean 'timeout'?``, by ``difflib``), and lists the keys allowed when
none is close. The keys and choices allowed at a location are read from the model's annotations.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]

_EXPECTED = {
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}
_MAPPING_TYPES = ("model_type", "model_attributes_type", "dict_type")
_SECRET_WORDS = ("token", "secret", "password")
_MAX_SHOWN = 60
_NOT_FOUND = object()


def describe(error: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    """The message for ``error``, found at document location ``loc`` of a ``model`` file."""
    kind = error["type"]
    given = error["input"]
    if kind == "extra_forbidden":
        return _unknown_key(loc, known_keys(model, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    if kind in _MAPPING_TYPES:
        return f"expected a mapping of keys, got {_kind_of(given)}"
    if kind == "literal_error":
        allowed = choices(model, loc)
        if allowed:
            return f"{_shown(given)} is not one of {', '.join(repr(c) for c in allowed)}"
    message = _EXPECTED.get(kind) or error["msg"]
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error") or _is_secret(loc) or not _scalar(given):
        return message
    return f"{message}, got {_shown(given)}"


def known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the mapping at ``loc`` accepts (empty when it is not a model's)."""
    target = _unwrap(annotation_at(model, loc))
    members = [_unwrap(m) for m in get_args(target)] if _is_union(target) else [target]
    return [
        field.alias or name
        for member in members
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, field in member.model_fields.items()
    ]


def choices(model: type[BaseModel], loc: Sequence[str | int]) -> list[Any]:
    """The values a ``Literal`` at ``loc`` allows (empty when it is not one)."""
    target = _unwrap(annotation_at(model, loc))
    members = get_args(target) if _is_union(target) else (target,)
    return [c for member in members if get_origin(member) is Literal for c in get_args(member)]


def annotation_at(model: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The type annotation of the value at ``loc`` in a ``model`` document."""
    current: Any = model
    for part in loc:
        current = _child(_unwrap(current), part)
        if current is _NOT_FOUND:
            break
    return current


def _child(annotation: Any, part: str | int) -> Any:
    if _is_union(annotation):
        # A union of models (a tagged union): the member that has the key.
        for member in get_args(annotation):
            found = _child(_unwrap(member), part)
            if found is not _NOT_FOUND:
                return found
        return _NOT_FOUND
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields.items() if isinstance(part, str) else ()
        field = next((f for name, f in fields if (f.alias or name) == part), None)
        return _NOT_FOUND if field is None else field.annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (tuple, list) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1]
    return _NOT_FOUND


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to ``X``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if _is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _unknown_key(loc: Loc, known: list[str]) -> str:
    key = loc[-1] if loc else ""
    if key in known:  # valid in another form of a union (an HTTP call, not a publish)
        return "does not go with the other keys here (it belongs to another form of this value)"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key, did you mean {close[0]!r}?"
    if known:
        return f"unknown key (expected one of {', '.join(known)})"
    return "unknown key"


def _is_secret(loc: Loc) -> bool:
    return any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _shown(value: object) -> str:
    if isinstance(value, str) and len(value) > _MAX_SHOWN:
        return repr(value[: _MAX_SHOWN - 3] + "...")
    return repr(value) if _scalar(value) else _kind_of(value)


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)
