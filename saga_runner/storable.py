"""JSON that every saga store can keep: what comes from outside is checked or cleaned first.

PostgreSQL's ``jsonb`` refuses ``NaN`` and ``Infinity``, the ``\\u0000`` character and unpaired
UTF-16 surrogates, and the recursive code a value passes through (redaction, templates, the JSON
encoder) fails on very deep nesting. Such a value used to fail the write on PostgreSQL only: a
trigger got a misleading 503, and a step answer paused its saga, which recovery resumed and
re-sent again and again, forever. So a trigger body that breaks these rules is refused
(``parse_json`` raises ``UnstorableJson``), a step answer that breaks them is kept as cleaned text
(``caller.decode_body``), and header values are cleaned (``clean_text``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from saga_runner.errors import UnstorableJson

MAX_DEPTH: Final = 64
REPLACEMENT: Final = "\ufffd"
_UNSTORABLE_CHARS: Final = re.compile("[\x00\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise UnstorableJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnstorableJson(f"{text} is out of range for a JSON number")
    return value


def parse_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON document that every saga store can keep.

    Raises:
        UnstorableJson: the document is malformed (or not UTF-8), holds ``NaN``/``Infinity`` or
            an out-of-range number, a ``\\u0000`` or an unpaired surrogate, or is nested more
            than ``max_depth`` levels deep.
    """
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise UnstorableJson(f"nested more than {max_depth} levels deep") from None
    except UnstorableJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many integer digits
        raise UnstorableJson(str(exc)) from exc
    check_storable(value, max_depth)
    return value


def _check_text(text: str) -> None:
    if _UNSTORABLE_CHARS.search(text):
        raise UnstorableJson("a string holds a NUL character or an unpaired surrogate")


def check_storable(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``UnstorableJson`` when a decoded JSON value breaks a rule of ``parse_json``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise UnstorableJson(f"{item} is not a JSON number")
        elif isinstance(item, dict | list) and depth > max_depth:
            raise UnstorableJson(f"nested more than {max_depth} levels deep")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(str(key))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def clean_text(text: str) -> str:
    """``text`` with NUL characters and unpaired surrogates replaced by U+FFFD.

    aiohttp hands over header bytes that are not UTF-8 as lone surrogates; they become U+FFFD.
    """
    return _UNSTORABLE_CHARS.sub(REPLACEMENT, text)
