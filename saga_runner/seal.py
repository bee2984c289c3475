"""Sealing of the redacted trigger values, so a resumed saga renders its calls from the real input.

The stored input and ``started`` headers are redacted (see ``redact``). With
``sagas.encryption_keys`` set, the values redaction replaced are kept AES-256-GCM-encrypted in
the ``started`` event's detail (under ``SEALED``, a member no view shows), bound to the saga's
id; a run rebuilt from the records opens them to render its calls. The first key encrypts, every
key decrypts, so keys rotate by putting the new one first. Without a key that opens them, a
template needing a redacted value fails with ``Unsealed.reason`` instead of sending the
placeholder.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from saga_runner.redact import Redactor

SEALED = "sealed"
KEY_BYTES = 32
_NONCE_BYTES = 12
_NO_KEYS = "no sagas.encryption_keys are set to recover it"
_NOT_SEALED = "its sealed copy was not stored (the saga started without sagas.encryption_keys)"
_NO_KEY_OPENS = "none of sagas.encryption_keys opens its sealed copy"


def decode_key(text: str) -> bytes:
    """The raw key of a base64 ``sagas.encryption_keys`` entry; ValueError unless 32 bytes."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an encryption key must be base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"an encryption key must decode to {KEY_BYTES} bytes, not {len(key)}")
    return key


@dataclass(frozen=True)
class Unsealed:
    """What a run rebuilt from the records may render: the input and headers, as far as known.

    ``reason`` is None when every redacted value was recovered (or none was redacted); else it
    says why the redacted values are still placeholders.
    """

    input: Any
    headers: dict[str, str]
    reason: str | None


class Sealer:
    """Encrypts a trigger's redacted values for its ``started`` event, and decrypts them back."""

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        self._keys = {_key_id(key): AESGCM(key) for key in keys}
        self._first = _key_id(keys[0]) if keys else None

    @classmethod
    def from_base64(cls, keys: Iterable[str]) -> Sealer:
        """A sealer with the keys of ``sagas.encryption_keys`` (the first encrypts)."""
        return cls([decode_key(key) for key in keys])

    def seal(
        self, redactor: Redactor, saga_id: str, input_data: Any, headers: Mapping[str, str]
    ) -> dict[str, str] | None:
        """The sealed redacted values of a trigger; None without keys or nothing redacted."""
        if self._first is None:
            return None
        fields: list[list[Any]] = []
        _collect(input_data, redactor.fields, [], fields)
        hidden = {k: v for k, v in headers.items() if k.lower() in redactor.headers}
        if not fields and not hidden:
            return None
        plain = json.dumps({"fields": fields, "headers": hidden}).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._first].encrypt(nonce, plain, saga_id.encode())
        return {"kid": self._first, "nonce": _b64(nonce), "ct": _b64(sealed)}

    def unseal(
        self, saga_id: str, stored_input: Any, headers: Mapping[str, str], sealed: object
    ) -> Unsealed:
        """The stored input and headers with their redacted values put back, when possible."""
        if not isinstance(sealed, Mapping):
            reason = _NO_KEYS if self._first is None else _NOT_SEALED
            return Unsealed(stored_input, dict(headers), reason)
        opened = self._open(saga_id, sealed)
        if opened is None:
            reason = _NO_KEYS if self._first is None else _NO_KEY_OPENS
            return Unsealed(stored_input, dict(headers), reason)
        restored = copy.deepcopy(stored_input)
        for entry in opened.get("fields", []):
            restored = _put(restored, entry[0], entry[1])
        return Unsealed(restored, {**headers, **opened.get("headers", {})}, None)

    def _open(self, saga_id: str, sealed: Mapping[str, Any]) -> dict[str, Any] | None:
        kid, nonce, ct = sealed.get("kid"), sealed.get("nonce"), sealed.get("ct")
        if not (isinstance(kid, str) and isinstance(nonce, str) and isinstance(ct, str)):
            return None
        cipher = self._keys.get(kid)
        if cipher is None:
            return None
        try:
            plain = cipher.decrypt(base64.b64decode(nonce), base64.b64decode(ct), saga_id.encode())
        except (InvalidTag, binascii.Error, ValueError):
            return None
        opened = json.loads(plain)
        return opened if isinstance(opened, dict) else None


def _key_id(key: bytes) -> str:
    """A short public name for a key (not the key): which one sealed a record."""
    return hashlib.sha256(b"saga-sidecar seal key id\0" + key).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _collect(value: Any, fields: frozenset[str], path: list[Any], out: list[list[Any]]) -> None:
    """Append ``[path, value]`` for every value ``Redactor.redact_body`` replaces in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() in fields:
                out.append([[*path, key], item])
            else:
                _collect(item, fields, [*path, key], out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect(item, fields, [*path, index], out)


def _put(value: Any, path: Sequence[Any], item: Any) -> Any:
    """``value`` with ``item`` at ``path`` (unchanged where the path does not fit)."""
    if not path:
        return item
    head, rest = path[0], path[1:]
    fits_dict = isinstance(value, dict) and isinstance(head, str) and head in value
    fits_list = isinstance(value, list) and isinstance(head, int) and 0 <= head < len(value)
    if fits_dict or fits_list:
        value[head] = _put(value[head], rest, item)
    return value
