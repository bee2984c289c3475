"""Idempotency-Key protection (docs/IDEMPOTENCY.md): a covered request executes at most once.

Public surface for the application factory: ``middleware.guarded`` (what the public listener's
one middleware calls), ``idempotency_middleware`` (the same as a standalone aiohttp middleware,
after a problems middleware), ``idempotency_ctx`` (a cleanup context appended before the task
scheduler's; it gives the guard the executors of ``proxy.keys.EXECUTORS``, see
``proxy.idempotency.executor``). ``store_from_url`` builds a store on its own.
"""

from __future__ import annotations

from proxy.idempotency.middleware import (
    IDEMPOTENCY_GUARD,
    IdempotencyGuard,
    idempotency_ctx,
    idempotency_middleware,
)
from proxy.idempotency.store import IdempotencyStore, store_from_url

__all__ = [
    "IDEMPOTENCY_GUARD",
    "IdempotencyGuard",
    "IdempotencyStore",
    "idempotency_ctx",
    "idempotency_middleware",
    "store_from_url",
]
