"""Spans of the public request path, after OpenTelemetry's HTTP semantic conventions.

- ``server_middleware``: the SERVER span of a proxied request, the child of the incoming W3C
  ``traceparent`` (a new trace without one), named ``METHOD`` or ``METHOD ROUTE`` for a saga
  trigger; it ends once the whole answer went out.
- ``Decision``: the idempotency decision of a covered request with a key, a child of the server
  span whose ``idempotency.outcome`` is the access log's; the key itself is never exported,
  only a digest of its scoped (HMAC'd) form.
- ``TracedForwarder``: the CLIENT span of each upstream call, which ends when the answer's
  headers arrive; the app gets that span's ``traceparent`` instead of the client's.

No query string is exported (as in the access log): ``url.path`` and ``url.full`` end at ``?``.
"""

from __future__ import annotations

import hashlib
from contextvars import Token
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from proxy.errors import UpstreamError
from proxy.forward import Forwarder, request_target
from proxy.forward_executor import FORWARD_ROUTE
from proxy.keys import IDEMPOTENCY_OUTCOME, SAGAS
from proxy.metrics import KNOWN_METHODS, OTHER_METHOD, upstream_error_kind
from proxy.upstream import RequestBody, UpstreamResponse

OUTCOME = "idempotency.outcome"
KEY_DIGEST = "idempotency.key_digest"


def method_attributes(method: str) -> dict[str, Any]:
    """``http.request.method``, ``_OTHER`` (with the original) for a method HTTP does not
    define."""
    if method in KNOWN_METHODS:
        return {http_attributes.HTTP_REQUEST_METHOD: method}
    return {
        http_attributes.HTTP_REQUEST_METHOD: OTHER_METHOD,
        http_attributes.HTTP_REQUEST_METHOD_ORIGINAL: method,
    }


def span_name(method: str, route: str | None = None) -> str:
    """``METHOD`` or ``METHOD ROUTE`` (``HTTP`` for a method HTTP does not define)."""
    name = method if method in KNOWN_METHODS else "HTTP"
    return f"{name} {route}" if route else name


def address_attributes(authority: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` (when given) of a ``Host`` header's value."""
    host, _, port = authority.rpartition(":")
    if not host or not port.isdigit() or (host.startswith("[") != host.endswith("]")):
        return {server_attributes.SERVER_ADDRESS: authority.strip("[]")}
    return {
        server_attributes.SERVER_ADDRESS: host.strip("[]"),
        server_attributes.SERVER_PORT: int(port),
    }


def answered(span: Span, status: int, server: bool) -> None:
    """Record ``status``; an error is a 5xx on a server span, any 4xx or 5xx on a client span."""
    span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
    if status >= 500 or (status >= 400 and not server):
        span.set_attribute(error_attributes.ERROR_TYPE, str(status))
        span.set_status(Status(StatusCode.ERROR))


def failed(span: Span, kind: str, exc: BaseException) -> None:
    """Record that the operation ended with ``exc`` (``error.type`` ``kind``)."""
    span.set_attribute(error_attributes.ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _route(request: web.Request) -> str | None:
    """The route's template: a route of its own, or on the catch-all route a saga's trigger
    path (as ``SagaTriggers`` matches it); None for a request forwarded to the app."""
    route = request.match_info.route
    if route.resource is None:
        return None
    if route.name != FORWARD_ROUTE:
        return route.resource.canonical
    sagas = request.app.get(SAGAS)
    trigger = (
        None if sagas is None else sagas.catalog.match(request.method, request.rel_url.path_safe)
    )
    return None if trigger is None else trigger.trigger.path


def _server_attributes(request: web.Request, route: str | None) -> dict[str, Any]:
    version = request.version
    host = request.headers.get("Host")  # (``request.host`` would resolve this host's name)
    attributes = {
        **method_attributes(request.method),
        **(address_attributes(host) if host else {}),
        url_attributes.URL_SCHEME: request.scheme,
        url_attributes.URL_PATH: request.raw_path.partition("?")[0],
        network_attributes.NETWORK_PROTOCOL_VERSION: f"{version.major}.{version.minor}",
    }
    if request.remote:
        attributes[client_attributes.CLIENT_ADDRESS] = request.remote
        attributes[network_attributes.NETWORK_PEER_ADDRESS] = request.remote
    agent = request.headers.get("User-Agent")
    if agent:
        attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
    if route:
        attributes[http_attributes.HTTP_ROUTE] = route
    return attributes


def server_middleware(tracer: Tracer, propagator: TextMapPropagator) -> Middleware:
    """The outermost middleware of the public listener: one SERVER span per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        span = tracer.start_span(
            span_name(request.method, route),
            context=propagator.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=_server_attributes(request, route),
        )
        status, error = 500, None
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except BaseException as exc:
            error = exc  # cut short after the answer began, or cancelled
            raise
        finally:
            span.set_attribute(OUTCOME, request.get(IDEMPOTENCY_OUTCOME, "bypass"))
            answered(span, status, server=True)
            if error is not None:
                failed(span, type(error).__qualname__, error)
            span.end()

    return middleware


class SpanScope:
    """A span that ends with its ``with`` block; an exception out of the block (but an HTTP
    exception, which is an answer) marks it failed."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closing()
        if exc is not None and not isinstance(exc, web.HTTPException):
            failed(self._span, type(exc).__qualname__, exc)
        self._span.end()

    def closing(self) -> None:
        """What a subclass records as the block ends, before the span does."""


class Decision(SpanScope):
    """The span of one idempotency decision (``proxy.tracing.DecisionSpan``), current while
    the guard decides and runs the request."""

    __slots__ = ("_request", "_token")
    _token: Token[Context]

    def __init__(self, tracer: Tracer, request: web.Request) -> None:
        super().__init__(tracer.start_span("idempotency"))
        self._request = request

    def __enter__(self) -> Self:
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def closing(self) -> None:
        """Leave the decision's context; record its outcome."""
        context.detach(self._token)
        self._span.set_attribute(OUTCOME, self._request.get(IDEMPOTENCY_OUTCOME, "bypass"))

    def keyed(self, lookup: str) -> None:
        """Export a digest of the scoped key, enough to find the other requests with it."""
        digest = hashlib.sha256(lookup.encode("ascii")).hexdigest()[:16]
        self._span.set_attribute(KEY_DIGEST, digest)


def exported_url(url: str) -> str:
    """``url`` as exported in ``url.full``: without user info (it may hold credentials), query
    and fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class TracedForwarder(Forwarder):
    """A ``Forwarder`` that sends every upstream call in a CLIENT span of its own."""

    def __init__(
        self,
        *args: Any,
        tracer: Tracer,
        propagator: TextMapPropagator,
        upstream_url: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tracer = tracer
        self.propagator = propagator
        self.origin = exported_url(upstream_url)
        self._address: dict[str, Any] = {
            server_attributes.SERVER_ADDRESS: self.client.host,
            server_attributes.SERVER_PORT: self.client.port,
            network_attributes.NETWORK_PROTOCOL_VERSION: "1.1",
        }

    async def _send(
        self, request: web.Request, body: RequestBody, trace_lines: bytes | None = None
    ) -> UpstreamResponse:
        path = request_target(request).partition("?")[0]
        span = self.tracer.start_span(
            span_name(request.method),
            kind=SpanKind.CLIENT,
            attributes={
                **method_attributes(request.method),
                **self._address,
                url_attributes.URL_FULL: self.origin + path,
            },
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        lines = "".join(f"{name}: {value}\r\n" for name, value in carrier.items())
        try:
            response = await super()._send(request, body, lines.encode("latin-1"))
        except BaseException as exc:
            kind = upstream_error_kind(exc) if isinstance(exc, UpstreamError) else None
            failed(span, kind or type(exc).__qualname__, exc)
            raise
        else:
            answered(span, response.status, server=False)
            return response
        finally:
            span.end()
