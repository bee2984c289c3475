"""Pure header helpers: hop-by-hop filtering and X-Forwarded-* construction (RFC 9110 §7.6.1)."""

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


def add_forwarded(
    headers: CIMultiDict[str], *, client_ip: str | None, proto: str, host: str | None
) -> None:
    """Extend ``X-Forwarded-For`` and set ``X-Forwarded-Proto`` / ``X-Forwarded-Host``."""
    previous = ", ".join(headers.getall("X-Forwarded-For", []))
    if client_ip:
        headers["X-Forwarded-For"] = f"{previous}, {client_ip}" if previous else client_ip
    headers.setdefault("X-Forwarded-Proto", proto)
    if host:
        headers.setdefault("X-Forwarded-Host", host)
