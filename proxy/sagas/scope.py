"""Who may read a saga's status URL: the scope of the request that started it.

A saga records its trigger's scope: the ``idempotency.scope_headers`` values HMAC'd exactly as
the idempotency layer scopes its keys (``KeyScoper.scope_key``), so the saga store never holds a
raw credential. Its status URL answers only a request of the same scope; with no scope headers
configured nothing is recorded (None) and the saga's id alone is enough. ``UNREADABLE`` is
recorded when the scope could not be computed: it matches no request.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from proxy.keys import KEY_SCOPER

UNREADABLE = "-"
"""The scope of a saga whose caller's scope was unknown (never a digest: matches nobody)."""


async def request_scope(request: web.Request) -> str | None:
    """The scope of ``request`` as a saga records it; None when no scope headers are set.

    Raises:
        StoreUnavailable: no ``key_secret`` is configured and the idempotency store's secret is
            unknown.
    """
    scoper = request.app[KEY_SCOPER]
    if not scoper.scope_headers:
        return None
    return await scoper.scope_key(request.headers)


def may_read(recorded: str | None, scope: str | None) -> bool:
    """Whether a request of ``scope`` may read a saga whose trigger recorded ``recorded``."""
    if recorded is None:
        return True
    return scope is not None and hmac.compare_digest(recorded, scope)
