"""JSON Schema of a YAML file validated by a pydantic model, for editors (YAML language server).

``file_schema`` is the model's own validation schema (``model_json_schema``), with two changes:
wherever a value other than free text is expected (a number, a duration, a choice, true/false),
a string holding a ``${VAR}`` or ``${VAR:-default}`` reference is accepted too, because
``load_yaml`` substitutes it before the model sees the value; and a choice between two models
told apart by a key only one of them has (a saga's step or ``parallel`` group) becomes
``if``/``then``/``else``, so an editor underlines the wrong key inside the chosen one instead of
the whole value. Nothing is written by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENV_REFERENCE = "EnvReference"
_ENV_REFERENCE_SCHEMA = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "${VAR} or ${VAR:-default}: replaced from the environment when the file is read",
}
_META = frozenset({"title", "description", "default", "examples"})
_TEXT_LIMITS = frozenset({"pattern", "enum", "const", "format", "minLength", "maxLength"})
_SCALAR_TYPES = frozenset({"number", "integer", "boolean", "string"})


def file_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    """The JSON Schema of a YAML file that ``model`` validates, titled ``title``."""
    schema = model.model_json_schema(mode="validation")
    _choose_by_key(schema, schema.get("$defs", {}))
    _allow_references(schema)
    schema.setdefault("$defs", {})[ENV_REFERENCE] = dict(_ENV_REFERENCE_SCHEMA)
    return {"$schema": DIALECT, **schema, "title": title}


def _choose_by_key(node: Any, defs: dict[str, Any]) -> None:
    """Turn each ``oneOf`` of two models, one with a required key the other lacks, into
    ``if`` (that key is present) ``then`` (that model) ``else`` (the other), in place."""
    if isinstance(node, list):
        for item in node:
            _choose_by_key(item, defs)
        return
    if not isinstance(node, dict):
        return
    members = node.get("oneOf")
    if isinstance(members, list) and len(members) == 2 and all("$ref" in m for m in members):
        first, second = (defs.get(m["$ref"].rsplit("/", 1)[-1], {}) for m in members)
        for this, other, (chosen, rest) in (
            (first, second, members),
            (second, first, members[::-1]),
        ):
            marks = [k for k in this.get("required", []) if k not in other.get("properties", {})]
            if marks:
                del node["oneOf"]
                node.update({"if": {"required": marks[:1]}, "then": chosen, "else": rest})
                break
    for value in node.values():
        _choose_by_key(value, defs)


def _allow_references(node: Any) -> None:
    """Let every non-text value below ``node`` also be a ``${VAR}`` reference (in place)."""
    if isinstance(node, list):
        for item in node:
            _allow_references(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "properties":
            for name, child in value.items():
                value[name] = _with_reference(child)
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            node[key] = _with_reference(value)
        elif key == "prefixItems":
            node[key] = [_with_reference(child) for child in value]
    for value in node.values():
        _allow_references(value)


def _with_reference(schema: dict[str, Any]) -> dict[str, Any]:
    if not _may_be_scalar(schema) or _any_text(schema):
        return schema
    reference = {"$ref": f"#/$defs/{ENV_REFERENCE}"}
    if "anyOf" in schema and set(schema) - _META == {"anyOf"}:
        return {**schema, "anyOf": [*schema["anyOf"], reference]}
    meta = {k: v for k, v in schema.items() if k in _META}
    rest = {k: v for k, v in schema.items() if k not in _META}
    return {**meta, "anyOf": [rest, reference]}


def _may_be_scalar(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` accepts some number, boolean or string (a ``${VAR}`` could stand in)."""
    if "anyOf" in schema:
        return any(_may_be_scalar(member) for member in schema["anyOf"])
    return schema.get("type") in _SCALAR_TYPES or "enum" in schema or "const" in schema


def _any_text(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` accepts every string already."""
    if "anyOf" in schema:
        return any(_any_text(member) for member in schema["anyOf"])
    if set(schema) <= _META:
        return True
    return schema.get("type") == "string" and _TEXT_LIMITS.isdisjoint(schema)
