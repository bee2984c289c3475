"""The stored response of a finished idempotent request, and its compact binary encoding.

A record holds what a replay needs: status, the headers worth replaying, the body, the request
fingerprint it answers, and when it was made. ``body_retained=False`` marks a request that finished
with a body too large to keep: its duplicates are refused, never re-executed.

Encoding (``encode_record``): ``b"R1"``, a flags byte, a 4-byte big-endian length, that many bytes
of JSON metadata, then the body (zlib-compressed when that makes it smaller). Every lock value the
stores write starts with ``b"L"``, so one byte tells a lock from a record.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from proxy.errors import RecordFormatError
from proxy.headers import HOP_BY_HOP

RECORD_MAGIC = b"R1"
_FLAG_ZLIB = 0x01
_LENGTH = struct.Struct(">I")
_COMPRESS_FROM = 512

# Never stored: per-connection or per-response values the replay regenerates, and cookies.
NOT_STORED = HOP_BY_HOP | {
    "set-cookie",
    "date",
    "content-length",
    "x-request-id",
    "idempotent-replayed",
}


@dataclass(frozen=True)
class StoredResponse:
    """A finished request's answer, as replayed to its duplicates."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    fingerprint: str
    created: float
    body_retained: bool = True
    reason: str = ""


def headers_to_store(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The response headers worth replaying: end-to-end, no cookies, no Date/Content-Length."""
    return tuple((name, value) for name, value in headers if name.lower() not in NOT_STORED)


def without_body(record: StoredResponse) -> StoredResponse:
    """The "not retained" marker of ``record``: its status and fingerprint, no headers or body."""
    return replace(record, headers=(), body=b"", body_retained=False)


def encode_record(record: StoredResponse) -> bytes:
    """Serialize ``record`` compactly (see the module docstring for the layout)."""
    meta = json.dumps(
        [
            record.status,
            [list(pair) for pair in record.headers],
            record.fingerprint,
            round(record.created, 3),
            record.body_retained,
            record.reason,
        ],
        separators=(",", ":"),
    ).encode()
    body, flags = record.body, 0
    if len(body) >= _COMPRESS_FROM:
        packed = zlib.compress(body, 1)
        if len(packed) < len(body):
            body, flags = packed, _FLAG_ZLIB
    return b"".join((RECORD_MAGIC, bytes([flags]), _LENGTH.pack(len(meta)), meta, body))


def decode_record(data: bytes) -> StoredResponse:
    """Parse bytes written by ``encode_record``.

    Raises:
        RecordFormatError: the bytes are not such a record.
    """
    if not data.startswith(RECORD_MAGIC) or len(data) < 7:
        raise RecordFormatError("not an idempotency record")
    flags = data[2]
    (length,) = _LENGTH.unpack_from(data, 3)
    try:
        status, headers, fingerprint, created, retained, reason = json.loads(data[7 : 7 + length])
        body = data[7 + length :]
        if flags & _FLAG_ZLIB:
            body = zlib.decompress(body)
        return StoredResponse(
            status=int(status),
            headers=tuple((str(name), str(value)) for name, value in headers),
            body=body,
            fingerprint=str(fingerprint),
            created=float(created),
            body_retained=bool(retained),
            reason=str(reason),
        )
    except (ValueError, TypeError, zlib.error) as exc:
        raise RecordFormatError(f"corrupt idempotency record: {exc}") from exc
