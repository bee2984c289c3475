"""The sidecar's own paths on the public listener (a saga's status URL, the callbacks path).

Each is served for every method at the path and everything under it, before the saga triggers
and the catch-all forwarder, so nothing there ever reaches the app, and outside the idempotency
guard (``UNGUARDED``).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.keys import UNGUARDED


def serve_own_path(app: web.Application, path: str, tail: str, handler: Handler) -> None:
    """Route ``path`` and ``path/{tail}`` (any method) to ``handler``, unguarded."""
    app.router.add_route("*", path, handler)
    app.router.add_route("*", f"{path}/{{{tail}:.*}}", handler)
    app[UNGUARDED] = app.get(UNGUARDED, frozenset()) | {handler}
