"""Request paths as the app will resolve them: dot segments in any spelling, and route keys.

RFC 3986 §5.2.4 and WHATWG URL parsers resolve a segment ``..`` as a step up and ``.`` as
nothing, and many servers (Node, Tomcat, Spring) also resolve ``%2e%2e`` (any case, any mix such
as ``.%2E``) and ``..;params``. The sidecar forwards the path behind ``upstream.url``'s own path
(``http://app/svc`` + ``/x`` → ``/svc/x``), so a climbing segment would leave that prefix.

``resolve_dots`` resolves dot segments in every spelling and raises ``PathEscape`` when one climbs
above the root; the upstream target is the resolved path, so the app never sees a dot segment.
``route_key`` is the form idempotency routes are matched on: resolved, each segment
percent-decoded and stripped of ``;params``, empty segments dropped, lower-cased.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from urllib.parse import unquote

from proxy.errors import PathEscape

_DOT_ESCAPE = re.compile("%2e", re.IGNORECASE)


def _dot_kind(segment: str) -> str | None:
    """``"."`` or ``".."`` when ``segment`` is a dot segment in any spelling, else None."""
    name = segment.split(";", 1)[0]
    if len(name) > 6 or not name:
        return None
    name = _DOT_ESCAPE.sub(".", name)
    return name if name in (".", "..") else None


def may_hold_dots(path: str) -> bool:
    """A cheap test: False means ``path`` certainly holds no dot segment."""
    return "/." in path or "%2" in path or path[:1] == "."


def resolve_dots(path: str) -> str:
    """``path`` (no query) with its dot segments resolved; other bytes are kept as written.

    Raises:
        PathEscape: a ``..`` segment climbs above the root.
    """
    if not may_hold_dots(path):
        return path
    segments = path.split("/")
    kept: list[str] = [segments[0]]
    for index, segment in enumerate(segments[1:], start=1):
        kind = _dot_kind(segment)
        last = index == len(segments) - 1
        if kind is None:
            kept.append(segment)
            continue
        if kind == "..":
            if len(kept) <= 1:
                raise PathEscape(f"the request path climbs above the root: {path[:200]!r}")
            kept.pop()
        if last:
            kept.append("")  # "/a/." and "/a/b/.." end in a slash, as RFC 3986 resolves them
    return "/".join(kept) or "/"


def refuse_escape(target: str) -> None:
    """Refuse a request target whose path climbs above the root, before anything else runs.

    Raises:
        PathEscape: a ``..`` segment climbs above the root.
    """
    if may_hold_dots(target):
        resolved_target(target)


def split_target(target: str) -> tuple[str, str]:
    """The path and the query (with its ``?``, or empty) of a request target."""
    path, mark, query = target.partition("?")
    return path, mark + query


def resolved_target(target: str) -> str:
    """``target`` (path and query) with the path's dot segments resolved.

    Raises:
        PathEscape: a ``..`` segment climbs above the root.
    """
    path, query = split_target(target)
    if not may_hold_dots(path):
        return target
    return resolve_dots(path) + query


def route_key(target: str) -> str:
    """The form a request target is matched against idempotency routes in.

    Dot segments resolved (clamped at the root), each segment percent-decoded and cut at its
    first ``;``, empty segments dropped, lower-cased: ``//CHARGES/;v=1`` and ``/x/../charges/``
    both give ``/charges``.
    """
    path, _ = split_target(target)
    try:
        path = resolve_dots(path)
    except PathEscape:
        path = "/"
    names = (unquote(segment.split(";", 1)[0]) for segment in path.split("/"))
    return "/" + "/".join(name.lower() for name in names if name)


def route_pattern(pattern: str) -> str:
    """A configured route path (``*`` globs allowed) in the form ``route_key`` gives."""
    names = (segment for segment in pattern.split("/") if segment)
    return "/" + "/".join(name.lower() for name in names)


def route_matches(key: str, pattern: str) -> bool:
    """Whether a ``route_key`` matches a ``route_pattern`` (``/a/*`` also matches ``/a``)."""
    return fnmatchcase(key, pattern) or (key != "/" and fnmatchcase(key + "/", pattern))
