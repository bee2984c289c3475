"""A real OTLP/HTTP trace receiver: an aiohttp app decoding ``ExportTraceServiceRequest``.

``OtlpReceiver.app()`` answers ``POST /v1/traces`` (``application/x-protobuf``) as a collector
does and keeps every span it was sent as a ``ReceivedSpan`` (ids in hex, attributes as plain
values, links, status, the resource's attributes). It is served from the background loop, so a
test may block (stopping a sidecar, which flushes its spans) while spans arrive. ``wait_for``
polls until the spans a test expects are there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPAN_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


def value_of(value: AnyValue) -> Any:
    """The plain Python value of an OTLP ``AnyValue``."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def attributes_of(pairs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` pairs as a dict."""
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedLink:
    """A span link as received."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as a collector received it."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: tuple[ReceivedLink, ...]
    error: bool
    status_message: str
    resource: dict[str, Any] = field(repr=False)


def names(traceparent: str, span: ReceivedSpan | ReceivedLink) -> bool:
    """Whether a W3C ``traceparent`` names ``span`` as sampled (OTLP carries no trace flags)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    sampled = int(flags, 16) & 1 == 1
    return version == "00" and (trace_id, span_id) == (span.trace_id, span.span_id) and sampled


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=SPAN_KINDS.get(span.kind, "unspecified"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=attributes_of(span.attributes),
                        links=tuple(
                            ReceivedLink(
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                attributes_of(link.attributes),
                            )
                            for link in span.links
                        ),
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        status_message=span.status.message,
                        resource=resource,
                    )
                )
    return spans


class OtlpReceiver:
    """Collects the spans posted to its ``/v1/traces``."""

    def __init__(self) -> None:
        self.url = ""  # where it is served
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.content_types: set[str] = set()

    def app(self) -> web.Application:
        """The receiver as an aiohttp application."""
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        spans = decode(body)
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.content_types.add(request.content_type)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans received of one trace."""
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(
        self, check: Callable[[list[ReceivedSpan]], Any], what: str, within: float = 15.0
    ) -> Any:
        """Poll until ``check(spans)`` is truthy and return it; fail naming ``what``."""
        deadline = time.monotonic() + within
        while True:
            result = check(self.spans)
            if result:
                return result
            if time.monotonic() > deadline:
                names = [(s.name, s.trace_id[:8]) for s in self.spans]
                raise AssertionError(f"{what}: not within {within}s; received {names}")
            await asyncio.sleep(0.05)


def one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    """The one span whose fields (``name``, ``kind``, ``trace_id``…) equal ``match``."""
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {found}"
    return found[0]
