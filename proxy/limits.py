"""Request-head limits on the public listener: 431 for oversized heads, 408 for slow ones.

aiohttp's HTTP parser already refuses a header field or request line longer than
``limits.max_header_size`` (and more than 128 header lines), but answers with a plain-text 400;
and it has no deadline for receiving a request head, so a client trickling header bytes
(slow-loris) holds a connection for as long as it likes. ``LimitedRequestHandler`` answers every
error aiohttp raises before the app sees a request as ``application/problem+json`` (431 for the
header limits), refuses an HTTP/0.9 request line (no version) with 400, and answers 408 when a
request head is not complete within ``limits.read_timeout`` of its first byte (or of the
connection opening). An idle keep-alive connection between requests is left to aiohttp's
keep-alive timeout. ``LimitedAppRunner`` is an ``AppRunner`` whose server builds these
handlers. The slow *body* side of ``read_timeout`` lives in ``proxy.bodies``. The aiohttp
internals this leans on are reached through ``proxy.aiohttp_internals`` only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from proxy import aiohttp_internals as internals
from proxy.errors import RequestHeadTimeout
from proxy.problems import problem_response

log = logging.getLogger("saga_sidecar.limits")

_TOO_MANY_HEADERS = "Too many headers"
# From the first quoted value (``b'…'``, ``'…'``, ``bytearray(b'…')``) to the end of the line.
_QUOTED_RE = re.compile(r"\s*(bytearray\()?b?['\"].*")


def error_status(exc: BaseException | None, default: int) -> int:
    """The status for an error raised before the app saw the request."""
    if isinstance(exc, LineTooLong):
        return 431
    if isinstance(exc, BadHttpMessage) and exc.message.startswith(_TOO_MANY_HEADERS):
        return 431
    if isinstance(exc, RequestHeadTimeout):
        return 408
    return default


def safe_reason(exc: BaseException) -> str:
    """What the parser objected to, without the client's bytes it quotes.

    aiohttp's messages repeat the offending line (``Invalid header value char: b'Authorization:
    Bearer …'``); those bytes may be credentials, so neither a log line nor a problem detail
    may carry them.
    """
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    lines = str(text).splitlines()
    first = _QUOTED_RE.sub("", lines[0] if lines else "")
    return first.rstrip(" :.") or type(exc).__name__


def error_detail(status: int, exc: BaseException | None, max_field_size: int) -> str:
    """A problem detail for ``exc`` that never echoes the client's bytes back at length."""
    if status == 431:
        return (
            f"a request header field or the request line is longer than {max_field_size} "
            "bytes, or there are too many header fields"
        )
    if status == 408:
        return str(exc) if exc else "the request was not received in time"
    if status >= 500:
        return "the sidecar failed to handle this request"
    if isinstance(exc, HttpProcessingError) and exc.message:
        return f"malformed request: {safe_reason(exc)[:200]}"
    return "malformed request"


class LimitedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with problem+json errors and a request-head deadline."""

    __slots__ = ("head_timeout", "head_timer", "last_payload")

    def __init__(self, manager: web.Server, *, read_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.head_timeout = read_timeout
        self.head_timer: asyncio.TimerHandle | None = None
        self.last_payload: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        expecting_head = self.last_payload is None or self.last_payload.is_eof()
        queued = internals.queued_messages(self)
        super().data_received(data)
        if internals.queued_messages(self) > queued:
            self._refuse_http_0_9(queued)
            self.last_payload = internals.last_queued_payload(self)
            self._disarm_head_timer()
        elif expecting_head and data:
            self._arm_head_timer()

    def _refuse_http_0_9(self, first: int) -> None:
        """Turn a request parsed from a line without an HTTP version into a 400.

        aiohttp's parser reads ``GET /path`` as HTTP/0.9 and serves it; nothing legitimate sends
        that any more, and a request with no headers at all must not reach the app.
        """
        for index, message in internals.queued_requests_since(self, first):
            if isinstance(message, RawRequestMessage) and message.version < HttpVersion10:
                exc = BadHttpMessage("the request line has no HTTP version (HTTP/0.9)")
                internals.replace_queued_with_error(self, index, 400, exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer an error raised outside the app as problem+json and close the connection."""
        if request.writer.output_size > 0:
            # Already logged where it was raised; a second response would corrupt the first.
            raise ConnectionError("a response was already started; closing the connection")
        status = error_status(exc, status)
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.info(
                "rejected a request from %s with %s: %s",
                request.remote,
                status,
                safe_reason(exc) if exc is not None else "malformed request",
                extra={"status": status, "remote": request.remote},
            )
        response = problem_response(status, error_detail(status, exc, self.max_field_size))
        response.force_close()
        return response

    def _arm_head_timer(self) -> None:
        if not internals.expects_head(self):
            return
        if self.head_timeout and self.head_timer is None:
            loop = asyncio.get_running_loop()
            self.head_timer = loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if internals.is_closing(self):
            return
        if internals.is_busy(self):
            # A late pipelined head behind a request still being answered: finish that one.
            self.close()
            return
        exc = RequestHeadTimeout(f"the request head was not received within {self.head_timeout:g}s")
        # Reported as the parser reports a malformed request: the request loop answers it.
        internals.queue_error(self, 408, exc)


class LimitedServer(web.Server):
    """An aiohttp low-level server that builds ``LimitedRequestHandler`` connections."""

    def __init__(self, *args: Any, read_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def __call__(self) -> LimitedRequestHandler:
        return LimitedRequestHandler(
            self,
            loop=internals.server_loop(self),
            read_timeout=self.read_timeout,
            **internals.handler_options(self),
        )


class LimitedAppRunner(internals.CustomServerRunner):
    """An AppRunner whose connections enforce the request-head limits above."""

    __slots__ = ("read_timeout",)

    def __init__(self, app: web.Application, *, read_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.read_timeout = read_timeout

    def customize_server(self, plain: web.Server) -> web.Server:
        """aiohttp's server, rebuilt to make ``LimitedRequestHandler`` connections."""
        return LimitedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=internals.server_loop(plain),
            read_timeout=self.read_timeout,
            **internals.handler_options(plain),
        )
