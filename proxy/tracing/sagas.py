"""Saga spans with OpenTelemetry: ``SagaSpans`` implements ``saga_runner.tracing.SagaTracer``.

A run is an INTERNAL span ``saga NAME`` (``saga.id``, ``saga.name``, ``saga.status`` when it
ends; ``saga.resumed`` and a link to the first run's span when it continues an instance); each
attempt of a step call is a CLIENT span ``STEP action`` or ``STEP compensation`` with the saga
attributes, ``saga.step.name``, ``saga.step.kind``, ``saga.step.attempt``, ``saga.step.outcome``
and the HTTP client attributes of the semantic conventions (a step call that publishes is a
PRODUCER span with ``messaging.destination.name``, ``messaging.operation.type`` and
``saga.broker`` instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
    server_attributes,
    url_attributes,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from proxy.tracing.http import SpanScope, answered, exported_url, method_attributes
from saga_runner.caller import CallResult, Outcome
from saga_runner.states import SagaStatus
from saga_runner.tracing import CallSpan, RunSpan, StepCall

SAGA_ID = "saga.id"
SAGA_NAME = "saga.name"


def _inject(propagator: TextMapPropagator, span: Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


class _Run:
    """One run's span (``saga_runner.tracing.RunSpan``)."""

    __slots__ = ("_propagator", "_span")

    def __init__(self, span: Span, propagator: TextMapPropagator) -> None:
        self._span = span
        self._propagator = propagator

    def trace_context(self) -> dict[str, str]:
        return _inject(self._propagator, self._span)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with trace.use_span(self._span, end_on_exit=True):
            yield

    def ended_as(self, status: SagaStatus) -> None:
        self._span.set_attribute("saga.status", status.value)
        if status is SagaStatus.FAILED:
            self._span.set_status(Status(StatusCode.ERROR, "a compensation failed"))


def _url_attributes(url: str) -> dict[str, Any]:
    """``url.full`` and the server's address and port."""
    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        url_attributes.URL_FULL: exported_url(url),
        server_attributes.SERVER_ADDRESS: parts.hostname or "",
    }
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    if port is not None:
        attributes[server_attributes.SERVER_PORT] = port
    return attributes


class _Call(SpanScope):
    """One attempt's span (``saga_runner.tracing.CallSpan``)."""

    __slots__ = ("_propagator", "_published")

    def __init__(self, span: Span, propagator: TextMapPropagator, *, published: bool) -> None:
        super().__init__(span)
        self._propagator = propagator
        self._published = published

    def headers(self) -> Mapping[str, str]:
        return _inject(self._propagator, self._span)

    def answered(self, result: CallResult) -> None:
        self._span.set_attribute("saga.step.outcome", result.outcome.value)
        if self._published and result.outcome is Outcome.SUCCESS:
            return  # the broker took the message: no HTTP status to report
        if result.status is not None:
            answered(self._span, result.status, server=False)
            return
        # No answer: refused before anything was sent, or none came after it was.
        error = "no_answer" if result.sent else "connect"
        self._span.set_attribute(error_attributes.ERROR_TYPE, error)
        self._span.set_status(Status(StatusCode.ERROR, result.error))


class SagaSpans:
    """The spans of saga runs and step calls, on one tracer."""

    def __init__(self, tracer: Tracer, propagator: TextMapPropagator) -> None:
        self.tracer = tracer
        self.propagator = propagator

    def run(self, saga_id: str, saga: str, *, first_run: Mapping[str, str] | None) -> RunSpan:
        """A run's span, linked to the first run's when this one resumes the instance."""
        attributes: dict[str, Any] = {SAGA_ID: saga_id, SAGA_NAME: saga}
        links = []
        if first_run is not None:
            attributes["saga.resumed"] = True
            first = trace.get_current_span(self.propagator.extract(first_run))
            if first.get_span_context().is_valid:
                links.append(Link(first.get_span_context(), {"saga.link": "first_run"}))
        span = self.tracer.start_span(f"saga {saga}", attributes=attributes, links=links)
        return _Run(span, self.propagator)

    def call(self, call: StepCall) -> CallSpan:
        """An attempt's span, a child of the current run."""
        request = call.request
        attributes: dict[str, Any] = {
            SAGA_ID: call.saga_id,
            SAGA_NAME: call.saga,
            "saga.step.name": call.step,
            "saga.step.kind": call.kind,
            "saga.step.attempt": call.attempt,
        }
        if request.publish is not None:
            # A message: a producer span (the messaging conventions' destination and operation).
            attributes |= {
                "messaging.destination.name": request.publish.to,
                "messaging.operation.type": "send",
                "saga.broker": request.publish.broker,
            }
            span_kind = SpanKind.PRODUCER
        else:
            attributes |= {**method_attributes(request.method), **_url_attributes(request.url)}
            if call.attempt > 1:
                attributes[http_attributes.HTTP_REQUEST_RESEND_COUNT] = call.attempt - 1
            span_kind = SpanKind.CLIENT
        span = self.tracer.start_span(
            f"{call.step} {call.kind}", kind=span_kind, attributes=attributes
        )
        return _Call(span, self.propagator, published=request.publish is not None)
