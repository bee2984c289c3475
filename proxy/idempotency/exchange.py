"""Running a covered request: read its body whole, call the app, capture what it answered.

A covered request's body is read whole first (to fingerprint it; over ``max_request_body`` →
413). The catch-all forward route then calls the upstream directly with those bytes and buffers
the answer up to ``max_body``, so the record can be stored before the client sees anything;
a larger body, or one still arriving ``upstream.timeout`` after the headers (a stream), is
streamed on to the client after its "not retained" marker is stored. Any other
route (a saga trigger) runs its own handler, whose in-memory response is captured the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy.forward import Forwarder, check_declared_length, limited_body, relay, response_headers
from proxy.problems import problem_for_exception, problem_response
from proxy.upstream import UpstreamResponse

log = logging.getLogger("saga_sidecar.idempotency")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORWARD_ROUTE = "forward"


@dataclass(frozen=True)
class CoveredRequest:
    """A covered request with its body read: what executing it needs."""

    request: web.Request
    handler: Handler
    body: bytes
    fingerprint: str

    @property
    def forwarded(self) -> bool:
        """Whether the request is for the catch-all forward route (not a local handler)."""
        resource = self.request.match_info.route.resource
        return resource is not None and resource.name == FORWARD_ROUTE

    @property
    def upstream_body(self) -> bytes | None:
        """The body to send upstream (None when the request had none)."""
        return self.body if self.request.body_exists else None


@dataclass
class Answer:
    """What the app answered: enough to store it, and the response to give the client.

    ``body`` is None when it was not captured whole (too large, cut short, or already sent).
    ``ready`` is the response to return as is; ``rest`` (a body prefix and the open upstream
    response) is a large body still to be streamed.
    """

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | None
    ready: web.StreamResponse | None = None
    rest: tuple[bytes, UpstreamResponse] | None = None

    async def respond(self, request: web.Request) -> web.StreamResponse:
        """The client's response: the ready one, or the large body streamed now."""
        if self.rest is not None:
            prefix, upstream = self.rest
            return await stream_rest(request, self, prefix, upstream)
        if self.ready is None:
            raise RuntimeError("an answer without a response")
        return self.ready


async def read_body(request: web.Request, limit: int, read_timeout: float | None) -> bytes:
    """Read the whole request body, so it can be fingerprinted and sent again.

    Handlers running after this still see the body through ``request.read()``/``json()``.

    Raises:
        RequestBodyTooLarge: past ``limit`` bytes (→ 413).
        RequestBodyTimeout: the client paused longer than ``read_timeout`` (→ 408).
    """
    if not request.body_exists:
        return b""
    check_declared_length(request, limit)
    body = b"".join([chunk async for chunk in limited_body(request.content, limit, read_timeout)])
    # aiohttp caches read() here; setting it keeps request.read()/json() working downstream.
    request._read_bytes = body
    return body


def buffered_response(
    status: int, reason: str, headers: CIMultiDict[str], body: bytes
) -> web.Response:
    """A complete in-memory response; Content-Length is computed from ``body``."""
    kept = CIMultiDict((k, v) for k, v in headers.items() if k.lower() != "content-length")
    return web.Response(status=status, reason=reason or None, headers=kept, body=body)


async def read_capped(
    upstream: UpstreamResponse, limit: int, within: float | None = None
) -> tuple[bytes, bool]:
    """Read the upstream body up to just past ``limit`` bytes; True when it ended in time.

    It did not end in time either past ``limit`` bytes or, when ``within`` is set, when it has
    not ended ``within`` seconds after the headers: a body that trickles for ever (a stream)
    must reach the client, not sit in this buffer while its lease is renewed indefinitely.
    """
    whole = upstream.read_if_complete()
    if whole is not None:
        return whole, len(whole) <= limit
    buffer = bytearray()
    try:
        async with asyncio.timeout(within) as deadline:
            async for chunk in upstream.iter_chunks():
                buffer += chunk
                if len(buffer) > limit:
                    return bytes(buffer), False
    except TimeoutError:
        if not deadline.expired():
            raise  # the upstream's own read timeout: a body cut short
        return bytes(buffer), False
    return bytes(buffer), True


async def stream_rest(
    request: web.Request, answer: Answer, prefix: bytes, upstream: UpstreamResponse
) -> web.StreamResponse:
    """Send ``prefix`` and then the rest of ``upstream``'s body to the client as it arrives."""
    response = web.StreamResponse(status=answer.status, reason=answer.reason or None)
    response.headers.extend(answer.headers)
    if "Content-Length" not in response.headers:
        response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        await response.write(prefix)
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, TimeoutError) as exc:
        log.warning("large idempotent response cut short on %s: %r", request.path, exc)
        if request.transport is not None:
            request.transport.abort()
    return response


def _cut_short(status: int) -> web.Response:
    return problem_response(
        502,
        f"the upstream answered {status} but its response body was cut short",
        title="Bad Gateway",
    )


@asynccontextmanager
async def forward_answer(
    call: CoveredRequest, forwarder: Forwarder, max_body: int
) -> AsyncIterator[Answer]:
    """Send ``call`` upstream and yield its answer, buffered up to ``max_body`` bytes.

    Raises:
        UpstreamError: the upstream could not be reached or did not answer.
    """
    upstream = await forwarder.open(call.request, call.upstream_body)
    async with upstream:
        status, reason = upstream.status, upstream.reason or ""
        answer = Answer(status, reason, response_headers(upstream), body=None)
        try:
            body, whole = await read_capped(upstream, max_body, forwarder.timeout)
        except (ConnectionError, TimeoutError) as exc:
            log.warning("upstream body failed on %s: %r", call.request.path, exc)
            answer.ready = _cut_short(status)
            yield answer
            return
        if whole:
            answer.body = body
            answer.ready = buffered_response(status, reason, answer.headers, body)
        else:
            answer.rest = (body, upstream)
        yield answer


def captured(response: web.StreamResponse, max_body: int) -> Answer:
    """The answer a local handler produced: its body is captured when held in memory."""
    body = response.body if isinstance(response, web.Response) else None
    whole = isinstance(body, bytes) and len(body) <= max_body and not response.prepared
    return Answer(
        status=response.status,
        reason=response.reason,
        headers=CIMultiDict(response.headers),
        body=body if whole and isinstance(body, bytes) else None,
        ready=response,
    )


@asynccontextmanager
async def handler_answer(call: CoveredRequest, max_body: int) -> AsyncIterator[Answer]:
    """Run the route's own handler and yield its answer (HTTP errors become problems)."""
    try:
        response = await call.handler(call.request)
    except web.HTTPException as exc:
        response = problem_for_exception(exc)
    yield captured(response, max_body)


def open_answer(
    call: CoveredRequest, forwarder: Forwarder, max_body: int
) -> AbstractAsyncContextManager[Answer]:
    """The answer context for ``call``: forwarded upstream, or its route's own handler."""
    if call.forwarded:
        return forward_answer(call, forwarder, max_body)
    return handler_answer(call, max_body)


async def pass_through(call: CoveredRequest, forwarder: Forwarder) -> web.StreamResponse:
    """Execute ``call`` without protection (``on_store_error: pass``), streaming the answer."""
    if not call.forwarded:
        return await call.handler(call.request)
    upstream = await forwarder.open(call.request, call.upstream_body)
    async with upstream:
        return await relay(call.request, upstream)
