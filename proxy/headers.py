"""Pure header helpers: hop-by-hop filtering and X-Forwarded-* construction (RFC 9110 §7.6.1).

``end_to_end`` filters decoded headers (an upstream answer); ``forwarded_header_lines`` turns a
client request's raw header fields into the lines sent upstream, byte for byte as received.
"""

from __future__ import annotations

import re
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
# Replaced by the sidecar's own when tracing is on.
_NOT_FORWARDED_TRACED = _NOT_FORWARDED | {b"traceparent", b"tracestate"}
_XFF = b"x-forwarded-for"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a client says about earlier hops: dropped unless ``trust_forwarded`` (the sidecar sets its
# own X-Forwarded-For/Proto/Host instead).
_CLIENT_FORWARDED = frozenset(
    {_XFF, b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)


def _raw_connection_listed(raw: RawHeaders) -> frozenset[bytes]:
    names: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def forwarded_header_lines(
    raw: RawHeaders,
    *,
    client_ip: str | None,
    proto: str,
    request_id: str | None,
    trust_forwarded: bool = False,
    trace: bytes | None = None,
) -> bytes:
    """Header lines for the upstream: end-to-end fields as received plus ``X-Forwarded-*``.

    By default what the client said about earlier hops (``X-Forwarded-For/Proto/Host``,
    ``X-Real-IP``, ``Forwarded``) is dropped and the sidecar's own ``X-Forwarded-For`` (the
    peer), ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (from Host) are set. With
    ``trust_forwarded`` (the sidecar sits behind a proxy that sets them) they are kept and
    appended to as proxies do: the peer is added to ``X-Forwarded-For``, an element to
    ``Forwarded``, and ``X-Forwarded-Proto``/``-Host`` are added only when absent.
    ``X-Request-Id`` is set to ``request_id``. ``trace`` (tracing on: the sidecar's own
    ``traceparent``/``tracestate`` lines) replaces the client's trace context.
    """
    listed = _raw_connection_listed(raw)
    skipped = _NOT_FORWARDED if trace is None else _NOT_FORWARDED_TRACED
    lines: list[bytes] = []
    forwarded_for: list[bytes] = []
    forwarded: list[bytes] = []
    has_proto = has_host = False
    host = b""
    for name, value in raw:
        lower = name.lower()
        if lower in skipped or lower in listed:
            if lower == b"host":
                host = value
            continue
        if lower in _CLIENT_FORWARDED:
            if not trust_forwarded:
                continue
            if lower == _XFF:
                forwarded_for.append(value)
                continue
            if lower == b"forwarded":
                forwarded.append(value)
                continue
            has_proto = has_proto or lower == b"x-forwarded-proto"
            has_host = has_host or lower == b"x-forwarded-host"
        lines.append(b"%s: %s\r\n" % (name, value))
    ip = client_ip.encode("ascii") if client_ip else b""
    if ip:
        forwarded_for.append(ip)
    if forwarded_for:
        lines.append(b"X-Forwarded-For: %s\r\n" % b", ".join(forwarded_for))
    lines.extend(_this_hop(ip, proto.encode("ascii"), host, has_proto, has_host, forwarded))
    if request_id:
        lines.append(b"X-Request-Id: %s\r\n" % request_id.encode("ascii"))
    if trace:
        lines.append(trace)
    return b"".join(lines)


def _this_hop(
    ip: bytes, proto: bytes, host: bytes, has_proto: bool, has_host: bool, forwarded: list[bytes]
) -> list[bytes]:
    """X-Forwarded-Proto/Host lines (unless kept from the client), and ``Forwarded`` with this
    hop appended when the client's was kept."""
    lines = []
    if not has_proto:
        lines.append(b"X-Forwarded-Proto: %s\r\n" % proto)
    if host and not has_host:
        lines.append(b"X-Forwarded-Host: %s\r\n" % host)
    if forwarded:
        element = _forwarded_element(ip, proto, host)
        lines.append(b"Forwarded: %s\r\n" % b", ".join([*forwarded, element]))
    return lines


def _forwarded_element(ip: bytes, proto: bytes, host: bytes) -> bytes:
    """This hop's ``Forwarded`` element (RFC 7239): ``for=…;proto=…;host=…``."""
    parts = []
    if ip:
        parts.append(b'for="[%s]"' % ip if b":" in ip else b"for=" + ip)
    parts.append(b"proto=" + proto)
    if host:
        parts.append(b"host=" + (host if _TOKEN.fullmatch(host) else _quoted(host)))
    return b";".join(parts)


def _quoted(value: bytes) -> bytes:
    return b'"%s"' % value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
