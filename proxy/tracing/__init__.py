"""OpenTelemetry tracing (docs/OPERATIONS.md, Tracing), chosen once at startup.

Off unless ``tracing.endpoint`` is set. ``open_tracing`` then imports the OpenTelemetry SDK
(``proxy.tracing.otel``) and returns a ``Tracing``: the application factory adds its server-span
middleware, the upstream client becomes a ``TracedForwarder``, the idempotency guard opens a
decision span, and the saga engine gets its ``SagaTracer``. Off, none of the OpenTelemetry
side of this package is imported and the request path is the untraced one: no middleware, the
plain ``Forwarder``, the null decision span below and ``saga_runner.tracing.NULL_TRACER``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from proxy.config import TracingConfig
from proxy.keys import TRACING

if TYPE_CHECKING:
    from proxy.tracing.otel import Tracing


class DecisionSpan(AbstractContextManager["DecisionSpan"], Protocol):
    """The idempotency decision of one covered request: a context manager around it."""

    def keyed(self, lookup: str) -> None:
        """Note the request's scoped lookup key (only a digest of it is ever exported)."""
        ...


class _NullDecision(contextlib.nullcontext["_NullDecision"]):
    def __init__(self) -> None:
        super().__init__(self)

    def keyed(self, lookup: str) -> None:
        pass


NULL_DECISION: DecisionSpan = _NullDecision()
"""The decision span of an untraced process: it does nothing."""


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """Export the spans still queued and stop the exporter when the application stops.

    The public app's first cleanup context, so it closes last: after the drained requests and
    saga runs ended their spans.
    """
    yield
    await app[TRACING].close()


def open_tracing(config: TracingConfig) -> Tracing | None:
    """The process's tracing when ``config.endpoint`` is set (importing OpenTelemetry), else
    None."""
    if not config.endpoint:
        return None
    from proxy.tracing.otel import Tracing

    return Tracing(config)
