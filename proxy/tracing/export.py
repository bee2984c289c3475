"""Where spans go: a tracer provider whose batch processor exports over OTLP/HTTP (protobuf).

Spans are queued as they end and exported in batches from the processor's own thread, so a
slow or absent collector never holds up a request: when the queue is full, spans are dropped.
A collector that fails is said once (``saga_sidecar.tracing``, warning) and its return once
(info), never per batch: the exporter's own per-batch messages are silenced. The SDK's
``OTEL_BSP_*`` environment variables tune the batches (``OTEL_BSP_SCHEDULE_DELAY``, 5000 ms by
default) and ``OTEL_RESOURCE_ATTRIBUTES`` adds resource attributes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from proxy.config import TracingConfig

log = logging.getLogger("saga_sidecar.tracing")

# The OTLP exporter logs every failed batch, and the batch processor every span it drops from a
# full queue (on the request path): ``LoggedOnceExporter`` says it once instead.
_QUIETED_LOGGERS = {
    "opentelemetry.exporter.otlp.proto.http": logging.CRITICAL,
    "opentelemetry.sdk._shared_internal": logging.ERROR,
}
TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """The URL spans are posted to: ``endpoint`` itself when it has a path, else its
    ``/v1/traces`` (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read)."""
    if urlsplit(endpoint).path.strip("/"):
        return endpoint
    return endpoint.rstrip("/") + TRACES_PATH


class LoggedOnceExporter(SpanExporter):
    """Exports through ``exporter``; says once that export fails, and once that it works again.

    An exception from the exporter counts as a failed export: it never reaches the processor.
    """

    def __init__(self, exporter: SpanExporter, url: str) -> None:
        self.exporter = exporter
        self.url = url
        self._failing = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export one batch; note a change between failing and working."""
        try:
            result = self.exporter.export(spans)
            reason = "the collector refused the spans or could not be reached"
        except Exception as exc:
            result, reason = SpanExportResult.FAILURE, repr(exc)
        failing = result is not SpanExportResult.SUCCESS
        with self._lock:
            changed, self._failing = failing != self._failing, failing
        if changed and failing:
            log.warning(
                "trace export to %s failed (%s); spans are dropped until it works again, and "
                "requests are not affected",
                self.url,
                reason,
                extra={"event": "trace_export_failing"},
            )
        elif changed:
            log.info("trace export to %s works again", self.url, extra={"event": "trace_export"})
        return result

    def shutdown(self) -> None:
        """Shut the exporter down."""
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here."""
        return True


def build_provider(config: TracingConfig, version: str) -> TracerProvider:
    """A tracer provider exporting to ``config.endpoint``, sampling ``config.sample_ratio`` of
    new traces and following the caller's decision for the others."""
    for name, level in _QUIETED_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    resource = Resource.create(
        {
            "service.name": config.service_name,
            "service.version": version,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
    )
    url = traces_url(config.endpoint)
    exporter = OTLPSpanExporter(endpoint=url, headers=dict(config.headers), timeout=config.timeout)
    provider.add_span_processor(BatchSpanProcessor(LoggedOnceExporter(exporter, url)))
    return provider
