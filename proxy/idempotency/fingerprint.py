"""The request fingerprint a key is bound to: method, path with query, and the body's hash.

The body is hashed as the bytes that arrived (re-serialising would make honest
retries mismatch). Two requests with the same key and different fingerprints are a mismatch (422).
"""

from __future__ import annotations

import hashlib


def fingerprint(method: str, raw_path: str, body: bytes) -> str:
    """Hex SHA-256 over ``method``, the raw path with query, and SHA-256 of ``body``."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode("ascii", "surrogateescape"))
    digest.update(b"\n")
    digest.update(raw_path.encode("utf-8", "surrogatepass"))
    digest.update(b"\n")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()
