"""Pure header helpers: hop-by-hop filtering and X-Forwarded-* construction (RFC 9110 §7.6.1).

``end_to_end`` filters decoded headers (an upstream answer); ``forwarded_header_lines`` turns a
client request's raw header fields into the lines sent upstream, byte for byte as received.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def connection_listed(headers: Headers) -> set[str]:
    """Lower-case names listed in the ``Connection`` header(s)."""
    names: set[str] = set()
    for value in headers.getall("Connection", []):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def end_to_end(headers: Headers, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy ``headers`` keeping repeated fields, without hop-by-hop ones and names in ``drop``."""
    excluded = HOP_BY_HOP | connection_listed(headers) | {name.lower() for name in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in excluded)


RawHeaders = tuple[tuple[bytes, bytes], ...]
# Never copied from the client: hop-by-hop, the upstream's own Host, the body framing (set for
# the body actually sent), the request id (set below) and Expect (answered by this listener).
_NOT_FORWARDED = frozenset(name.encode() for name in HOP_BY_HOP) | {
    b"host",
    b"content-length",
    b"x-request-id",
    b"expect",
}
_XFF = b"x-forwarded-for"


def _raw_connection_listed(raw: RawHeaders) -> frozenset[bytes]:
    names: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def forwarded_header_lines(
    raw: RawHeaders, *, client_ip: str | None, proto: str, request_id: str | None
) -> bytes:
    """Header lines for the upstream: end-to-end fields as received plus ``X-Forwarded-*``.

    ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` (from Host) are added unless the client sent them; ``X-Request-Id``
    is set to ``request_id``.
    """
    listed = _raw_connection_listed(raw)
    lines: list[bytes] = []
    forwarded_for: list[bytes] = []
    has_proto = has_host = False
    host = b""
    for name, value in raw:
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower in listed:
            if lower == b"host":
                host = value
            continue
        if lower == _XFF:
            forwarded_for.append(value)
            continue
        if lower == b"x-forwarded-proto":
            has_proto = True
        elif lower == b"x-forwarded-host":
            has_host = True
        lines.append(b"%s: %s\r\n" % (name, value))
    if client_ip:
        forwarded_for.append(client_ip.encode("ascii"))
    if forwarded_for:
        lines.append(b"X-Forwarded-For: %s\r\n" % b", ".join(forwarded_for))
    if not has_proto:
        lines.append(b"X-Forwarded-Proto: %s\r\n" % proto.encode("ascii"))
    if host and not has_host:
        lines.append(b"X-Forwarded-Host: %s\r\n" % host)
    if request_id:
        lines.append(b"X-Request-Id: %s\r\n" % request_id.encode("ascii"))
    return b"".join(lines)
