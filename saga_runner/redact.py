"""Redaction of secrets before anything is stored in saga records, logged, or shown to operators.

Header names (case-insensitive) and JSON body field names (at any depth) listed in the ``redact``
config section have their values replaced by ``"[REDACTED]"``. ``Authorization`` and cookies are
always redacted, whatever the config says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
ALWAYS_REDACTED_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization"}
)


class Redactor:
    """Replaces configured sensitive headers and body fields with a marker."""

    def __init__(self, headers: Iterable[str] = (), fields: Iterable[str] = ()) -> None:
        self.configure(headers, fields)

    def configure(self, headers: Iterable[str], fields: Iterable[str]) -> None:
        """Redact these header and field names from now on (a config reload changes them)."""
        self.headers = ALWAYS_REDACTED_HEADERS | {h.lower() for h in headers}
        self.fields = frozenset(f.lower() for f in fields)

    def redact_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``headers`` with sensitive values replaced."""
        return {k: (REDACTED if k.lower() in self.headers else v) for k, v in headers.items()}

    def redact_body(self, value: Any) -> Any:
        """A copy of a JSON value with sensitive fields (at any depth) replaced."""
        if isinstance(value, dict):
            return {
                k: (REDACTED if str(k).lower() in self.fields else self.redact_body(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact_body(v) for v in value]
        return value

    def redact_call(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Redact a ``{method, url, headers, body}`` or ``{status, headers, body}`` record."""
        out = dict(record)
        if isinstance(out.get("headers"), Mapping):
            out["headers"] = self.redact_headers(out["headers"])
        if "body" in out:
            out["body"] = self.redact_body(out["body"])
        return out
