"""The ``Idempotency-Key`` header, the ``Prefer: wait`` preference, and key scoping.

``parse_key`` accepts the draft's Structured Field String form (``"abc"``) and the bare form
(``abc``) as the same key: 1-255 visible ASCII characters, exactly one header field line.
``KeyScoper`` turns a key into the store's lookup key: an HMAC-SHA256, under ``key_secret`` (or
the store's random per-store secret), of the ``scope_headers`` values and the key, so tenants
never share keys and no raw credential or client-chosen string ever reaches the store.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

from multidict import CIMultiDictProxy

from proxy.errors import InvalidKey
from proxy.idempotency.store import IdempotencyStore

MAX_KEY_LENGTH = 255
MAX_PREFER_WAIT = 300


def _unquote_sf_string(raw: str) -> str:
    """The content of an RFC 8941 sf-string ``"..."`` (escapes: ``\\"`` and ``\\\\`` only)."""
    chars: list[str] = []
    index = 1
    while index < len(raw):
        char = raw[index]
        if char == "\\":
            if index + 1 >= len(raw) or raw[index + 1] not in '"\\':
                raise InvalidKey("invalid escape in the quoted key")
            chars.append(raw[index + 1])
            index += 2
        elif char == '"':
            if index != len(raw) - 1:
                raise InvalidKey("unexpected characters after the quoted key")
            return "".join(chars)
        else:
            chars.append(char)
            index += 1
    raise InvalidKey("the quoted key has no closing quote")


def parse_key(values: Sequence[str], header: str = "Idempotency-Key") -> str | None:
    """The key named by the header field lines ``values``; None when there is none.

    Raises:
        InvalidKey: more than one field line, or a key that is not 1-255 visible ASCII
            characters (bare or as a structured-field string).
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKey(f"more than one {header} header")
    raw = values[0].strip(" \t")
    key = _unquote_sf_string(raw) if raw.startswith('"') else raw
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidKey(f"{header} must be 1 to {MAX_KEY_LENGTH} characters long")
    if not all("!" <= char <= "~" for char in key):
        raise InvalidKey(f"{header} must consist of visible ASCII characters only")
    return key


def parse_prefer_wait(values: Sequence[str]) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped; None when absent or invalid."""
    for value in values:
        for preference in value.split(","):
            name, _, rest = preference.partition("=")
            if name.strip().lower() != "wait":
                continue
            seconds = rest.split(";", 1)[0].strip().strip('"')
            if seconds.isascii() and seconds.isdigit():
                return min(int(seconds), MAX_PREFER_WAIT)
    return None


class KeyScoper:
    """Derives the store's lookup key from the scope header values and the client's key."""

    def __init__(
        self, scope_headers: Sequence[str], key_secret: str, store: IdempotencyStore
    ) -> None:
        self.scope_headers = tuple(name.lower() for name in scope_headers)
        self._configured = key_secret.encode() if key_secret else None
        self._store = store

    def material(self, headers: CIMultiDictProxy[str], key: str) -> bytes:
        """The unambiguous byte string that is HMAC'd: every scope header's values, then the key."""
        return json.dumps(["v1", self._scope(headers), key], ensure_ascii=True).encode("ascii")

    def _scope(self, headers: CIMultiDictProxy[str]) -> list[list[object]]:
        return [[name, headers.getall(name, [])] for name in self.scope_headers]

    async def lookup_key(self, headers: CIMultiDictProxy[str], key: str) -> str:
        """The scoped key for ``key`` sent with ``headers``.

        Raises:
            StoreUnavailable: no ``key_secret`` is configured and the store's secret is unknown.
        """
        secret = self._configured or await self._store.secret()
        return hmac.digest(secret, self.material(headers, key), "sha256").hex()

    async def scope_key(self, headers: CIMultiDictProxy[str]) -> str:
        """The scope (``scope_headers`` values) of a request, HMAC'd as ``lookup_key`` is.

        Raises:
            StoreUnavailable: no ``key_secret`` is configured and the store's secret is unknown.
        """
        material = json.dumps(["v1-scope", self._scope(headers)], ensure_ascii=True).encode("ascii")
        secret = self._configured or await self._store.secret()
        return hmac.digest(secret, material, "sha256").hex()
