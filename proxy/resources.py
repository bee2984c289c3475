"""Cleanup contexts: every long-lived resource of the public app is opened and closed here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiojobs import Scheduler

from proxy.forward import Forwarder
from proxy.keys import CONFIG, FORWARDER, METRICS, TASKS, TRACING
from proxy.upstream import UpstreamClient

# How long a task cancelled at the end of the shutdown grace gets for its ``finally`` blocks
# (a saga run releases its lease there, one store round trip) before it is cut off for good.
CLEANUP_AFTER_CANCEL = 5.0

# Response header lines the app may send (aiohttp's default, 8190 bytes, turns a large
# Content-Security-Policy or Set-Cookie into a 502); Envoy's default limit is of this order.
_MAX_UPSTREAM_HEADER_FIELD = 64 * 1024


async def upstream_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's pooled keep-alive client for the upstream app, behind the Forwarder."""
    config = app[CONFIG].config
    metrics = app[METRICS]
    client = UpstreamClient(
        config.upstream.url,
        timeout=config.upstream.timeout,
        limit=config.upstream.max_connections,
        keepalive=config.upstream.keepalive,
        max_field_size=_MAX_UPSTREAM_HEADER_FIELD,
        pool_timeout=config.upstream.pool_timeout,
        max_per_client=config.upstream.max_connections_per_client,
        on_body_error=metrics.upstream_failed,
    )
    tracing = app.get(TRACING)
    forwarder: Callable[..., Forwarder] = (
        Forwarder if tracing is None else tracing.forwarder(config.upstream.url)
    )
    app[FORWARDER] = forwarder(
        client,
        config.limits.max_request_body,
        config.limits.read_timeout,
        trust_forwarded=config.trust_forwarded,
        write_timeout=config.limits.write_timeout,
        metrics=metrics,
    )
    yield
    await client.close()


def new_task_scheduler() -> Scheduler:
    """The app's tracked background tasks (shielded upstream calls, async sagas), unbounded.

    Built with the app, before any cleanup context starts, so the contexts that open consumers
    of it (the idempotency guard) are handed it; ``task_scheduler_ctx`` drains it at shutdown.
    A task still running when the grace ends is cancelled and given ``CLEANUP_AFTER_CANCEL``
    to finish its cleanup (aiojobs' default, 0.1 s, cancelled a lease release mid-statement).
    """
    return Scheduler(limit=None, pending_limit=0, close_timeout=CLEANUP_AFTER_CANCEL)


async def task_scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Drain the app's tracked tasks (``TASKS``) at shutdown within the grace.

    Append it after the contexts whose resources those tasks use, so it drains before they close.
    """
    yield
    await app[TASKS].wait_and_close(timeout=app[CONFIG].config.shutdown_grace)
