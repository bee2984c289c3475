"""Duration and size values as written in YAML files (``250ms``, ``24h``, ``1MiB``).

``Duration`` and ``ByteSize`` are pydantic-annotated types: a field declared with them accepts the
string form (or a plain number: seconds, bytes) and holds a float of seconds or an int of bytes.
Their JSON Schema (docs/schema/) accepts the same two forms, the string one by the same pattern.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Return seconds for ``250ms``/``30s``/``5m``/``24h``/``30d`` or a finite number >= 0."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms, 30s, 5m or 24h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 30s, 5m or 24h, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Return bytes for ``512``, ``16KiB``, ``100MiB``, ``1GB``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 16KiB or 100MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        size = int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])
    else:
        raise ValueError(f"expected a size like 16KiB or 100MiB, got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size


def _either(number: str, pattern: re.Pattern[str], example: str) -> WithJsonSchema:
    """The JSON Schema of a value written as a plain number or as text matching ``pattern``."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": number, "minimum": 0},
                {"type": "string", "pattern": pattern.pattern, "examples": [example]},
            ]
        },
        mode="validation",
    )


Duration = Annotated[
    float, BeforeValidator(parse_duration), _either("number", _DURATION_RE, "250ms")
]
ByteSize = Annotated[int, BeforeValidator(parse_size), _either("integer", _SIZE_RE, "16KiB")]
