"""Streaming pass-through to the upstream app.

``Forwarder.open`` sends one request upstream (method, raw path and query, end-to-end headers,
``X-Forwarded-*``, a streamed or buffered body) and classifies failures into ``UpstreamError``s;
``relay`` streams an upstream response back to the client. ``Forwarder.handle`` is the catch-all
handler composing the two. Bodies are never held whole in memory on this path (except an answer
of declared length up to ``SMALL_BODY``, sent in one write), and nothing the
app may already have executed is sent twice: only a safe request without a body is retried,
once, when its (pooled) connection drops before any answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.bodies import BodyReader
from proxy.errors import UpstreamError, UpstreamReset, UpstreamUpgrade
from proxy.headers import end_to_end, forwarded_header_lines
from proxy.keys import REQUEST_ID, UPSTREAM_SECONDS
from proxy.metrics import SidecarMetrics
from proxy.paths import resolved_target
from proxy.upstream import RequestBody, UpstreamClient, UpstreamResponse

log = logging.getLogger("saga_sidecar.forward")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Answers of declared length up to this are read whole and sent in one write (fewer awaits and
# syscalls than streaming); larger or open-ended ones are streamed as they arrive.
SMALL_BODY = 64 * 1024


def request_target(request: web.Request) -> str:
    """The path and query to send upstream, as the client wrote them but for dot segments.

    An absolute-form target (``GET http://host/path``) is reduced to its path and query; dot
    segments in any spelling are resolved (``proxy.paths``), so the app never sees one.

    Raises:
        PathEscape: a ``..`` segment climbs above the root (out of ``upstream.url``'s path).
    """
    raw = request.raw_path
    if not raw.startswith("/"):
        url = URL(raw, encoded=True)
        raw = (url.raw_path_qs or "/") if url.absolute else raw
    return resolved_target(raw)


def _reason(exc: BaseException) -> str:
    """One short line saying why an upstream call failed, for a problem detail."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class Forwarder:
    """Sends requests to the upstream app over the process's ``UpstreamClient``.

    Every upstream call is timed into ``metrics`` and a failed one counted by kind (a body that
    breaks later is counted by the client's ``on_body_error``).
    """

    def __init__(
        self,
        client: UpstreamClient,
        max_request_body: int,
        read_timeout: float | None = None,
        trust_forwarded: bool = False,
        write_timeout: float | None = None,
        *,
        metrics: SidecarMetrics,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.trust_forwarded = trust_forwarded
        self.timeout = client.timeout
        self.bodies = BodyReader(max_request_body, read_timeout)
        self.write_timeout = write_timeout

    def upstream_header_lines(self, request: web.Request, trace: bytes | None = None) -> bytes:
        """End-to-end request header lines plus X-Forwarded-* (``trust_forwarded``) and the
        request id; ``trace`` lines replace the client's trace context (tracing on)."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return forwarded_header_lines(
            request.raw_headers,
            client_ip=peer[0] if isinstance(peer, tuple) else None,
            proto=request.scheme,
            request_id=request.get(REQUEST_ID),
            trust_forwarded=self.trust_forwarded,
            trace=trace,
        )

    async def open(self, request: web.Request, body: RequestBody) -> UpstreamResponse:
        """Send ``request`` upstream with ``body`` and return the response (headers read).

        A safe request without a body whose connection is dropped before any answer is sent
        once more: that is how a pooled keep-alive connection the app closed at the same
        moment shows up, and a safe method may be repeated.

        Raises:
            UpstreamUnreachable: nothing was sent (connection refused, DNS, pool).
            UpstreamReset: the connection broke after sending.
            UpstreamTimeout: no response headers within the timeout.
            UpstreamUpgrade: the app answered 101 (its connection is closed).
            RequestBodyError: reading the client's streamed body failed (too large, too slow,
                the client left).
        """
        started = time.perf_counter()
        try:
            try:
                response = await self._send(request, body)
            except UpstreamReset as exc:
                if body is not None or request.method not in SAFE_METHODS:
                    raise
                log.info("retrying %s %s once after: %s", request.method, request.path, exc.detail)
                response = await self._send(request, body)
        except UpstreamError as exc:
            self.metrics.observe_upstream(time.perf_counter() - started)
            self.metrics.upstream_failed(exc)
            raise
        seconds = request[UPSTREAM_SECONDS] = time.perf_counter() - started
        self.metrics.observe_upstream(seconds)
        if response.status == 101:
            response.release()  # closes it: the app switched protocols on this connection
            log.warning(
                "the upstream answered %s %s with 101 Switching Protocols; the sidecar relays "
                "no protocol upgrade, so the client gets a 502",
                request.method,
                request.path,
            )
            upgrade = UpstreamUpgrade(
                "the upstream answered 101 Switching Protocols; this sidecar does not relay "
                "protocol upgrades (WebSocket, h2c)"
            )
            self.metrics.upstream_failed(upgrade)
            raise upgrade
        return response

    async def _send(
        self, request: web.Request, body: RequestBody, trace_lines: bytes | None = None
    ) -> UpstreamResponse:
        return await self.client.send(
            request.method,
            request_target(request).encode("latin-1"),
            self.upstream_header_lines(request, trace_lines),
            body,
            request.content_length,
            client=request.remote,
        )

    async def request_body(self, request: web.Request) -> RequestBody:
        """The request body to send: whole when small and of declared length, else a stream."""
        return await self.bodies.relayable(request, SMALL_BODY)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Catch-all handler: stream the request to the upstream and its answer back.

        A small answer of declared length is read whole and sent in one write instead.
        """
        upstream = await self.open(request, await self.request_body(request))
        async with upstream:
            if is_small_whole(request, upstream):
                return await buffered_relay(upstream)
            return await relay(request, upstream, self.write_timeout)


def is_small_whole(request: web.Request, upstream: UpstreamResponse) -> bool:
    """Whether the answer has a body of declared length up to ``SMALL_BODY`` bytes."""
    length = upstream.content_length
    return (
        length is not None
        and length <= SMALL_BODY
        and request.method != "HEAD"
        and upstream.status >= 200
        and upstream.status not in (204, 304)
    )


async def buffered_relay(upstream: UpstreamResponse) -> web.Response:
    """The upstream's (small) answer read whole, as one response the client gets in one write.

    Raises:
        UpstreamReset: the body was cut short; nothing went to the client yet, so it is a 502.
    """
    try:
        body = await upstream.read()
    except (ConnectionError, TimeoutError) as exc:
        raise UpstreamReset(f"upstream response body cut short: {_reason(exc)}") from exc
    headers = response_headers(upstream)
    headers.popall("Content-Length", None)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def response_headers(upstream: UpstreamResponse) -> CIMultiDict[str]:
    """End-to-end headers of an upstream response, ready to send to the client."""
    return end_to_end(upstream.headers)


async def relay(
    request: web.Request, upstream: UpstreamResponse, write_timeout: float | None = None
) -> web.StreamResponse:
    """Stream ``upstream`` to the client.

    A failure after the response headers went out cannot become an error response any more:
    the client connection is aborted so a truncated body is never mistaken for a complete one.
    So is a client that takes nothing for ``write_timeout`` seconds (the status went out, so no
    504 can follow): that frees the upstream connection its answer holds. Unexpected
    exceptions (and cancellation) abort it too, then propagate.
    """
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    # Without a Content-Length aiohttp frames the body itself: chunked for HTTP/1.1 clients,
    # delimited by closing the connection for HTTP/1.0 ones (which cannot take chunks).
    response.headers.extend(response_headers(upstream))
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            try:
                async with asyncio.timeout(write_timeout):
                    await response.write(chunk)
            except TimeoutError:
                log.warning(
                    "client took none of the answer to %s %s for %gs: dropped",
                    request.method,
                    request.path,
                    write_timeout,
                )
                abort_client(request)
                return response
        await response.write_eof()
    except (TimeoutError, ConnectionError) as exc:
        log.warning("response to %s %s cut short: %r", request.method, request.path, exc)
        abort_client(request)
    except BaseException:
        abort_client(request)
        raise
    return response


def abort_client(request: web.Request) -> None:
    """Abort the client connection so a cut-short body is seen as incomplete."""
    if request.transport is not None:
        request.transport.abort()
