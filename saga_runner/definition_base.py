"""What every saga definition model shares: the frozen base model and the validated field types.

``DefinitionModel`` is the base of every model of a saga file (unknown keys refused, frozen,
compared by declared values). The field types check one value each: ``Method`` (an HTTP method
of ``METHODS``, upper-cased), ``StatusCode``, ``Name`` (of a saga or a step), ``HeaderMap``
(header names a file may set: never ``SIDECAR_HEADERS``) and ``positive_duration``. Templates
are compiled by the models at validation time unless ``parse_definition`` already found
whole-document problems: then it validates with ``SKIP_CHECKS`` in the context
(``checks_skipped``), so that only the schema errors are added to them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, ValidationInfo

from yamlconfig.errors import KeyValueError

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""HTTP methods a trigger or a step call may use."""

SIDECAR_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "idempotency-key",
        "keep-alive",
        "proxy-connection",
        "saga-id",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Header names a saga file may not set: hop-by-hop, framing, or set by the sidecar itself."""

SKIP_CHECKS: Final = "saga_runner.definition.skip_template_checks"
"""Validation context key: when true, the models leave their templates uncompiled."""

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _method(value: str) -> str:
    upper = value.upper()
    if upper not in METHODS:
        raise ValueError(f"unsupported HTTP method {value!r} (use one of {', '.join(METHODS)})")
    return upper


def _status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError(f"HTTP status must be between 100 and 599, got {value}")
    return value


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (a letter, then letters, digits, '_' or '-'; max 64)"
        )
    return value


def positive_duration(value: float | None) -> float | None:
    """``value`` unchanged if absent or above 0; raise ValueError otherwise."""
    if value is not None and value <= 0:
        raise ValueError("must be greater than 0")
    return value


Method = Annotated[str, AfterValidator(_method)]
StatusCode = Annotated[int, Strict(), AfterValidator(_status)]
Name = Annotated[str, AfterValidator(_name)]


def checks_skipped(info: ValidationInfo) -> bool:
    """Whether this validation runs with ``SKIP_CHECKS`` (templates are left uncompiled)."""
    return isinstance(info.context, Mapping) and bool(info.context.get(SKIP_CHECKS))


class DefinitionModel(BaseModel):
    """Base of the saga definition models: unknown keys refused, frozen, attribute docstrings
    as field descriptions, equal when their declared values are."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    def __eq__(self, other: object) -> bool:
        # By declared values only: compiled templates keep the key order a file was written in.
        if type(other) is not type(self):
            return NotImplemented
        return self.model_dump() == other.model_dump()


def _header_names(value: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    for name in value:
        lower = name.lower()
        if not _TOKEN_RE.match(name):
            raise KeyValueError((name,), f"{name!r} is not a valid header name")
        if lower in SIDECAR_HEADERS:
            raise KeyValueError((name,), f"header {name!r} cannot be set in a saga file")
        if lower in seen:
            raise KeyValueError((name,), f"header {name!r} is given twice")
        seen.add(lower)
    return value


HeaderMap = Annotated[dict[str, str], AfterValidator(_header_names)]
