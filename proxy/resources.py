"""Cleanup contexts: every long-lived resource of the public app is opened and closed here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiojobs import Scheduler

from proxy.forward import Forwarder
from proxy.keys import CLIENT_SESSION, CONFIG, FORWARDER, TASKS

_POOL_SIZE = 1000
# Response header lines the app may send (aiohttp's default, 8190 bytes, turns a large
# Content-Security-Policy or Set-Cookie into a 502); Envoy's default limit is of this order.
_MAX_UPSTREAM_HEADER_FIELD = 64 * 1024


async def client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled keep-alive ClientSession for the process: no cookies, no decompression."""
    config = app[CONFIG].config
    connector = aiohttp.TCPConnector(limit=_POOL_SIZE, keepalive_timeout=30, ttl_dns_cache=60)
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        raise_for_status=False,
        max_line_size=_MAX_UPSTREAM_HEADER_FIELD,
        max_field_size=_MAX_UPSTREAM_HEADER_FIELD,
    )
    # aiohttp silently re-sends a bodyless GET/HEAD/OPTIONS/TRACE/PUT/DELETE once when the
    # connection drops before an answer; a PUT or DELETE the app may already have executed must
    # not run twice (idempotency promises at most once), so only Forwarder.open decides what to
    # retry. aiohttp's own TestClient turns it off the same way.
    session._retry_connection = False
    app[CLIENT_SESSION] = session
    app[FORWARDER] = Forwarder(
        session,
        config.upstream.url,
        config.upstream.timeout,
        config.limits.max_request_body,
        config.limits.read_timeout,
    )
    yield
    await session.close()


async def task_scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Tracked background tasks (shielded upstream calls); drained at shutdown within the grace."""
    scheduler = Scheduler(limit=None, pending_limit=0)
    app[TASKS] = scheduler
    yield
    await scheduler.wait_and_close(timeout=app[CONFIG].config.shutdown_grace)
