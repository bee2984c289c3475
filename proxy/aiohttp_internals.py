"""Every use of aiohttp's private internals, in one place (aiohttp is pinned to the minor tested).

aiohttp has no public hook for three things the sidecar needs: a deadline for receiving a
request head (``proxy.limits`` watches the connection handler's message queue, and reports a
late head by queueing aiohttp's own error record, as its parser reports a malformed request),
an ``AppRunner`` that builds its own connection handlers (``_make_server``), and handing a body
that was already read back to a local handler's ``request.read()``/``json()``. Each is one
small function or class here, so an aiohttp upgrade is checked in one module, and
``tests/foundation/test_aiohttp_internals.py`` fails by name when any of them changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

# The RequestHandler attributes read or written below (all in its ``__slots__``).
HANDLER_ATTRIBUTES = (
    "_messages",
    "_waiter",
    "_force_close",
    "_close",
    "_upgraded",
    "_payload_parser",
    "_request_in_progress",
)


def queued_messages(handler: web.RequestHandler) -> int:
    """How many parsed requests (or errors) wait for the handler's request loop."""
    return len(handler._messages)


def last_queued_payload(handler: web.RequestHandler) -> StreamReader:
    """The body stream of the request queued last."""
    return handler._messages[-1][1]


def queued_requests_since(handler: web.RequestHandler, first: int) -> list[tuple[int, Any]]:
    """``(index, message)`` of every parsed request queued at ``first`` or later."""
    return [(index, handler._messages[index][0]) for index in range(first, len(handler._messages))]


def replace_queued_with_error(
    handler: web.RequestHandler, index: int, status: int, exc: BaseException
) -> None:
    """Have the request queued at ``index`` answered as ``exc`` with ``status`` instead."""
    handler._messages[index] = (_ErrInfo(status=status, exc=exc, message=str(exc)), EMPTY_PAYLOAD)


def expects_head(handler: web.RequestHandler) -> bool:
    """Whether the connection's next bytes are a request head (not a body, not upgraded)."""
    return not (handler._force_close or handler._upgraded or handler._payload_parser is not None)


def is_closing(handler: web.RequestHandler) -> bool:
    """Whether the connection is already being closed."""
    return handler._force_close or handler._close or handler.transport is None


def is_busy(handler: web.RequestHandler) -> bool:
    """Whether a request is being answered or waits in the queue."""
    return handler._request_in_progress or bool(handler._messages)


def queue_error(handler: web.RequestHandler, status: int, exc: BaseException) -> None:
    """Have the handler's request loop answer ``exc`` with ``status`` (via ``handle_error``)."""
    handler._messages.append((_ErrInfo(status=status, exc=exc, message=str(exc)), EMPTY_PAYLOAD))
    waiter = handler._waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def handler_options(server: web.Server) -> dict[str, Any]:
    """The keyword arguments the server passes to each connection handler it builds."""
    return dict(server._kwargs)


def server_loop(server: web.Server) -> asyncio.AbstractEventLoop:
    """The event loop the server's handlers run on."""
    return server._loop


class CustomServerRunner(web.AppRunner):
    """An ``AppRunner`` whose low-level server ``customize_server`` may replace."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return self.customize_server(await super()._make_server())

    def customize_server(self, plain: web.Server) -> web.Server:
        """The server to run instead of ``plain`` (aiohttp's own); ``plain`` by default."""
        return plain


def keep_read_body(request: web.BaseRequest, body: bytes) -> None:
    """Make ``request.read()``/``json()``/``text()`` answer ``body``, which was read already."""
    request._read_bytes = body
