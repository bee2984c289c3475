"""The catch-all forward route, as an aiohttp handler and as the idempotency guard's executor.

Uncovered requests are streamed both ways by ``Forwarder.handle``. A covered request's body was
read whole by the guard; it is sent upstream with those bytes and the answer is buffered up to
``max_body``, so the record can be stored before the client sees anything. A larger body, or
one still arriving ``upstream.timeout`` after the headers (a stream), is streamed on to the
client after its "not retained" marker is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from aiohttp import web
from multidict import CIMultiDict

from proxy.forward import Forwarder, relay, response_headers
from proxy.idempotency.executor import Answer, CoveredRequest
from proxy.keys import FORWARDER
from proxy.problems import problem_response
from proxy.upstream import UpstreamResponse

log = logging.getLogger("saga_sidecar.forward")

FORWARD_ROUTE = "forward"
"""The name of the catch-all route (after the saga triggers) that ``ForwardExecutor`` serves."""


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


def upstream_body(call: CoveredRequest) -> bytes | None:
    """The body to send upstream (None when the request had none)."""
    return call.body if call.request.body_exists else None


@asynccontextmanager
async def forward_answer(
    call: CoveredRequest, forwarder: Forwarder, max_body: int
) -> AsyncIterator[Answer]:
    """Send ``call`` upstream and yield its answer, buffered up to ``max_body`` bytes.

    Raises:
        UpstreamError: the upstream could not be reached or did not answer.
    """
    upstream = await forwarder.open(call.request, upstream_body(call))
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

            async def stream(request: web.Request) -> web.StreamResponse:
                return await stream_rest(request, answer, body, upstream)

            answer.stream = stream
        yield answer


class ForwardExecutor:
    """The catch-all route: every request not answered by the sidecar goes to the upstream."""

    __slots__ = ()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route's handler: stream the request to the upstream and its answer back."""
        return await request.app[FORWARDER].handle(request)

    def run(self, call: CoveredRequest, max_body: int) -> AbstractAsyncContextManager[Answer]:
        """Forward ``call`` with its body read whole; its answer buffered up to ``max_body``."""
        return forward_answer(call, call.request.app[FORWARDER], max_body)

    async def run_unprotected(self, call: CoveredRequest) -> web.StreamResponse:
        """Forward ``call`` and stream its answer back."""
        forwarder = call.request.app[FORWARDER]
        upstream = await forwarder.open(call.request, upstream_body(call))
        async with upstream:
            return await relay(call.request, upstream, forwarder.write_timeout)
