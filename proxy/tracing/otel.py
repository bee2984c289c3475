"""A traced process's ``Tracing``: its tracer, and every span the sidecar opens with it.

Imported (with OpenTelemetry) only by ``proxy.tracing.open_tracing`` when ``tracing.endpoint``
is set. One is built per process with its applications; ``proxy.tracing.tracing_ctx`` closes it
when the public application stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.config import TracingConfig
from proxy.forward import Forwarder
from proxy.tracing import DecisionSpan
from proxy.tracing.export import build_provider
from proxy.tracing.http import Decision, TracedForwarder, server_middleware
from proxy.tracing.sagas import SagaSpans
from proxy.version import version

INSTRUMENTATION = "saga-sidecar"


class Tracing:
    """The tracer provider of one process and the span factories built on it."""

    def __init__(self, config: TracingConfig) -> None:
        self.provider = build_provider(config, version())
        self.tracer = self.provider.get_tracer(INSTRUMENTATION, version())
        self.propagator = TraceContextTextMapPropagator()
        self.sagas = SagaSpans(self.tracer, self.propagator)

    def middleware(self) -> Middleware:
        """The public listener's outermost middleware: a SERVER span per request."""
        return server_middleware(self.tracer, self.propagator)

    def decision(self, request: web.Request) -> DecisionSpan:
        """The span of ``request``'s idempotency decision."""
        return Decision(self.tracer, request)

    def forwarder(self, upstream_url: str) -> Callable[..., Forwarder]:
        """Builds the ``Forwarder`` to ``upstream_url`` (its arguments): a traced one."""
        return partial(
            TracedForwarder,
            tracer=self.tracer,
            propagator=self.propagator,
            upstream_url=upstream_url,
        )

    async def close(self) -> None:
        """Export the spans still queued and stop the exporter (off the event loop: it blocks
        for up to ``tracing.timeout``)."""
        await asyncio.to_thread(self.provider.shutdown)
