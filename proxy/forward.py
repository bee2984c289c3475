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
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import (
    RequestBodyError,
    RequestBodyTimeout,
    RequestBodyTooLarge,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.headers import add_forwarded, end_to_end
from proxy.keys import REQUEST_ID, UPSTREAM_SECONDS

log = logging.getLogger("saga_sidecar.forward")

RequestBody = bytes | AsyncIterator[bytes] | None
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Headers aiohttp's client would add on its own; the upstream gets only what the client sent.
_NOT_ADDED_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
ChunkSink = Callable[[bytes], None]
# Answers of declared length up to this are read whole and sent in one write (fewer awaits and
# syscalls than streaming); larger or open-ended ones are streamed as they arrive.
SMALL_BODY = 64 * 1024


async def limited_body(
    stream: aiohttp.StreamReader, limit: int, read_timeout: float | None = None
) -> AsyncIterator[bytes]:
    """Yield the request body chunk by chunk.

    Raises:
        RequestBodyTooLarge: past ``limit`` bytes.
        RequestBodyTimeout: when the client sends nothing for ``read_timeout`` seconds.
    """
    received = 0
    while True:
        try:
            async with asyncio.timeout(read_timeout):
                chunk = await stream.readany()
        except TimeoutError:
            raise RequestBodyTimeout(read_timeout or 0) from None
        if not chunk:
            return
        received += len(chunk)
        if received > limit:
            raise RequestBodyTooLarge(limit)
        yield chunk


def request_target(request: web.Request) -> str:
    """The path and query to send upstream, byte for byte as the client wrote them.

    An absolute-form target (``GET http://host/path``) is reduced to its path and query.
    """
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    url = URL(raw, encoded=True)
    return (url.raw_path_qs or "/") if url.absolute else raw


def request_body_error(exc: BaseException) -> RequestBodyError | None:
    """The RequestBodyError behind ``exc``, if reading the client's body is what failed.

    aiohttp's client sends the body from its own task and reports a failure of the body
    iterator as a ``ClientConnectionError`` caused by it.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RequestBodyError):
            return seen
        seen = seen.__cause__
    return None


def _reason(exc: BaseException) -> str:
    """One short line saying why an upstream call failed, for a problem detail."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_declared_length(request: web.Request, limit: int) -> None:
    """Refuse a request whose Content-Length already exceeds ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestBodyTooLarge(limit)


class Forwarder:
    """Sends requests to one upstream base URL over a shared pooled ClientSession."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: float,
        max_request_body: int,
        read_timeout: float | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self.max_request_body = max_request_body
        self.read_timeout = read_timeout

    def upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        """End-to-end request headers plus X-Forwarded-* and the request id."""
        headers = end_to_end(request.headers, drop=("host",))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        add_forwarded(
            headers,
            client_ip=peer[0] if isinstance(peer, tuple) else None,
            proto=request.scheme,
            host=request.host,
        )
        request_id = request.get(REQUEST_ID)
        if request_id:
            headers["X-Request-Id"] = request_id
        return headers

    async def open(self, request: web.Request, body: RequestBody) -> aiohttp.ClientResponse:
        """Send ``request`` upstream with ``body`` and return the response (headers read).

        A safe request without a body whose connection is dropped before any answer is sent
        once more: that is how a pooled keep-alive connection the app closed at the same
        moment shows up, and a safe method may be repeated.

        Raises:
            UpstreamUnreachable: nothing was sent (connection refused, DNS, pool).
            UpstreamReset: the connection broke after sending.
            UpstreamTimeout: no response headers within the timeout.
            RequestBodyError: reading the client's streamed body failed (too large, too slow).
        """
        started = time.perf_counter()
        try:
            response = await self._send(request, body)
        except UpstreamReset as exc:
            if body is not None or request.method not in SAFE_METHODS:
                raise
            log.info("retrying %s %s once after: %s", request.method, request.path, exc.detail)
            response = await self._send(request, body)
        request[UPSTREAM_SECONDS] = time.perf_counter() - started
        return response

    async def _send(self, request: web.Request, body: RequestBody) -> aiohttp.ClientResponse:
        url = URL(self.base_url + request_target(request), encoded=True)
        try:
            return await self.session.request(
                request.method,
                url,
                headers=self.upstream_headers(request),
                data=body,
                timeout=self.timeout,
                allow_redirects=False,
                skip_auto_headers=_NOT_ADDED_HEADERS,
            )
        except RequestBodyError:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"upstream unreachable: {exc.os_error or exc}") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"upstream did not answer within {self.timeout.sock_read:g}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            body_error = request_body_error(exc)
            if body_error is not None:
                raise body_error from exc
            raise UpstreamReset(f"upstream connection failed: {_reason(exc)}") from exc

    def request_body(self, request: web.Request) -> RequestBody:
        """The streamed, size-limited request body, or None when the request has none."""
        if not request.body_exists:
            return None
        check_declared_length(request, self.max_request_body)
        return limited_body(request.content, self.max_request_body, self.read_timeout)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Catch-all handler: stream the request to the upstream and its answer back.

        A small answer of declared length is read whole and sent in one write instead.
        """
        upstream = await self.open(request, self.request_body(request))
        async with upstream:
            if is_small_whole(request, upstream):
                return await buffered_relay(upstream)
            return await relay(request, upstream)


def is_small_whole(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Whether the answer has a body of declared length up to ``SMALL_BODY`` bytes."""
    length = upstream.content_length
    return (
        length is not None
        and length <= SMALL_BODY
        and request.method != "HEAD"
        and upstream.status >= 200
        and upstream.status not in (204, 304)
    )


async def buffered_relay(upstream: aiohttp.ClientResponse) -> web.Response:
    """The upstream's (small) answer read whole, as one response the client gets in one write.

    Raises:
        UpstreamReset: the body was cut short; nothing went to the client yet, so it is a 502.
    """
    try:
        body = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamReset(f"upstream response body cut short: {_reason(exc)}") from exc
    headers = response_headers(upstream)
    headers.popall("Content-Length", None)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """End-to-end headers of an upstream response, ready to send to the client."""
    return end_to_end(upstream.headers)


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    sink: ChunkSink | None = None,
) -> web.StreamResponse:
    """Stream ``upstream`` to the client; each chunk is also given to ``sink`` when set.

    A failure after the response headers went out cannot become an error response any more:
    the client connection is aborted so a truncated body is never mistaken for a complete one.
    Unexpected exceptions (and cancellation) abort it too, then propagate.
    """
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    # Without a Content-Length aiohttp frames the body itself: chunked for HTTP/1.1 clients,
    # delimited by closing the connection for HTTP/1.0 ones (which cannot take chunks).
    response.headers.extend(response_headers(upstream))
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            if sink is not None:
                sink(chunk)
            await response.write(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
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
