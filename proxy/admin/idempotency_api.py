"""``DELETE /idempotency/{key}`` on the admin listener: an operator releases one key.

Without further headers it names the key as sent with no scope header; a scoped key is named by
passing each scope header's value as ``X-Scope-<Header>: value`` (``proxy.idempotency.operator``).
204 when something was deleted, 404 when nothing was held or stored, 503 when the store is down.
"""

from __future__ import annotations

from aiohttp import web

from proxy.errors import InvalidKey, StoreUnavailable
from proxy.idempotency.keys import parse_key
from proxy.idempotency.middleware import IDEMPOTENCY_GUARD
from proxy.idempotency.operator import forget_key, scope_from_admin_headers
from proxy.keys import PUBLIC_APP
from proxy.problems import problem_response


async def release_key(request: web.Request) -> web.StreamResponse:
    """Delete the lock, marker or stored answer of one idempotency key."""
    guard = request.app[PUBLIC_APP].get(IDEMPOTENCY_GUARD)
    if guard is None:
        return problem_response(503, "the idempotency store is not open yet")
    try:
        key = parse_key([request.match_info["key"]], "key")
    except InvalidKey as exc:
        return problem_response(400, str(exc))
    assert key is not None
    scope = scope_from_admin_headers(request.headers.items())
    try:
        deleted = await forget_key(guard.store, guard.scoper, key, scope)
    except StoreUnavailable as exc:
        return problem_response(503, f"the idempotency store is unavailable: {exc.detail}")
    if not deleted:
        return problem_response(404, "nothing is held or stored under this key and scope")
    return web.Response(status=204)


def setup_idempotency_admin_routes(app: web.Application) -> None:
    """Add ``DELETE /idempotency/{key}``."""
    app.router.add_delete("/idempotency/{key}", release_key)
