"""One keep-alive HTTP/1.1 connection to the upstream app: an asyncio ``Protocol`` fed to llhttp.

The connection carries one exchange at a time. It goes back to the pool only after an answer
framed by its own bytes (Content-Length or chunked) that arrived with nothing after it: an
answer without a body (to a HEAD, a 204, a 304) or any byte after a complete answer closes it,
so stray bytes from the app can never be read as another request's answer.

``start`` arms it for the next response (a fresh ``httptools`` parser each time); the
parser's callbacks collect the status line and headers, then queue body chunks for
``UpstreamResponse`` to take. Reading pauses while more than ``_HIGH_WATER`` bytes wait in the
queue, writing waits while the kernel's send buffer is full, so a large body streams through in
bounded memory in both directions.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
import struct
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict

from proxy.errors import UpstreamConnectionError

# Body bytes queued before the socket stops being read (the consumer is slower than the app).
_HIGH_WATER = 256 * 1024
# A response head larger than this is refused (a field line alone may be up to the field limit).
_MAX_HEAD = 1024 * 1024
# Linux's ``struct tcp_info``: ``tcpi_bytes_acked`` (u64) sits at this offset.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120


@dataclass(frozen=True)
class ResponseHead:
    """The status line and headers of an upstream response."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    content_length: int | None


class UpstreamConnection(asyncio.Protocol):
    """One pooled connection; ``idle_since`` is when it last went back to its pool.

    ``write_timeout`` is how long ``drain`` waits for the app to take more of a request.
    ``answered`` tells whether any byte of the current exchange's answer arrived; ``unread``
    that the app closed the connection before its kernel took a single byte of the current
    request (Linux's TCP_INFO shows none of them acknowledged), so the app cannot have read it.
    ``holder`` is the client its pool counts it against while it is busy.
    """

    def __init__(self, max_field_size: int, write_timeout: float | None = None) -> None:
        self.max_field_size = max_field_size
        self.write_timeout = write_timeout
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reusable = False
        self.answered = False
        self.unread = False
        self.holder: str | None = None
        self._sock: socket.socket | None = None
        self._poller: select.poll | None = None
        self._acked_base: int | None = None
        self._sent = 0
        self._sent_before = 0
        self._loop = asyncio.get_running_loop()
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head: asyncio.Future[ResponseHead] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._until_close = False
        self._paused = False
        self._done = False
        self._error: UpstreamConnectionError | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._sock = transport.get_extra_info("socket")
        self._acked_base = self._bytes_acked()  # the SYN counts as one
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self._parser is None or self._done:
            self._fail("the upstream sent data nobody asked for")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 (or an answer to CONNECT): its head was handed over, and what follows is
            # another protocol's bytes, never an HTTP answer. The connection is done.
            self.reusable = False
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamConnectionError):
                self._fail(str(cause))
            else:
                self._fail(f"the upstream sent an invalid response: {exc}")

    def eof_received(self) -> bool | None:
        self._note_unread()
        return None  # close the transport; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self._note_unread()
        self.reusable = False
        self.transport = None
        if self._parser is not None and not self._done:
            if self._until_close and exc is None:
                self._complete()
            else:
                why = f": {exc}" if exc else ""
                self._fail(f"the upstream closed the connection{why}")
        self._wake_drain(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    # -- the exchange --------------------------------------------------------------------------

    def stale(self) -> bool:
        """Whether this idle connection can no longer carry a request: it was dropped, or the
        app closed it (or sent something) while it sat in the pool and the event loop has not
        handled that yet. One ``poll`` without waiting: an idle socket is readable only then.
        """
        if not self.reusable or self.transport is None or self.transport.is_closing():
            return True
        if self._sock is None:
            return False
        if self._poller is None:  # made once per connection: a reuse costs one poll(2)
            self._poller = select.poll()
            events = select.POLLIN | select.POLLPRI | select.POLLRDHUP
            self._poller.register(self._sock.fileno(), events)
        return bool(self._poller.poll(0))

    def start(self, head_request: bool) -> asyncio.Future[ResponseHead]:
        """Arm the connection for the answer to the request about to be written."""
        self.answered = self.unread = False
        self._sent_before = self._sent
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._raw_headers = []
        self._head_size = 0
        self._reason = b""
        self._body.clear()
        self._buffered = 0
        self._until_close = self._done = False
        self._error = None
        self._head = self._loop.create_future()
        return self._head

    def write(self, data: bytes) -> None:
        """Send ``data``; raises when the connection is already gone."""
        if self.transport is None or self.transport.is_closing():
            self.unread = self.unread or self._sent == self._sent_before  # nothing went out
            raise UpstreamConnectionError(self._error_text("the upstream connection is closed"))
        self._sent += len(data)
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the kernel takes more of what was written.

        Raises:
            TimeoutError: the upstream took nothing for ``write_timeout`` seconds.
        """
        if not self._write_paused:
            return
        self._drain_waiter = self._loop.create_future()
        async with asyncio.timeout(self.write_timeout):
            await self._drain_waiter

    def take(self) -> bytes | None:
        """The next queued body chunk; ``b""`` at the end; None when nothing is queued yet."""
        if self._body:
            chunk = self._body.popleft()
            self._buffered -= len(chunk)
            if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return chunk
        if self._error is not None:
            raise self._error
        return b"" if self._done else None

    def take_all(self) -> bytes | None:
        """The rest of the body when all of it has arrived; None while more is to come."""
        if not self._done or self._error is not None:
            return None
        data = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait_body(self) -> None:
        """Wait for the next body chunk, the end of the body or a failure."""
        self._body_waiter = self._loop.create_future()
        try:
            await self._body_waiter
        finally:
            self._body_waiter = None

    @property
    def finished(self) -> bool:
        """Whether the whole answer arrived and was taken."""
        return self._done and not self._body and self._error is None

    def close(self) -> None:
        """Drop the connection; at once when request bytes are still unsent (the app answered
        early and may never read them), so the socket does not wait on the app to close."""
        self._abandon()
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent data."""
        self._abandon()
        if self.transport is not None:
            self.transport.abort()

    def _bytes_acked(self) -> int | None:
        """How many bytes the peer's kernel acknowledged (Linux), or None when unknown."""
        if self._sock is None or _TCP_INFO is None:
            return None
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
        except OSError:
            return None
        if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
            return None
        acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
        return acked

    def _note_unread(self) -> None:
        """On a close during an exchange: remember whether no byte of the request got there."""
        if self._parser is None or self._done or self.answered or self.unread:
            return
        acked = self._bytes_acked()
        if acked is not None and self._acked_base is not None:
            self.unread = acked - self._acked_base <= self._sent_before

    def _abandon(self) -> None:
        """Nobody waits for this exchange any more."""
        self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.cancel()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:  # a second answer right behind the complete one: nobody asked for it
            raise UpstreamConnectionError("the upstream sent data nobody asked for")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if len(name) + len(value) + 2 > self.max_field_size or self._head_size > _MAX_HEAD:
            raise UpstreamConnectionError("the upstream's response headers are too large")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._raw_headers = []
            self._reason = b""
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw_headers
        )
        content_length = _declared_length(headers.get("Content-Length"))
        no_body = self._head_request or status in (101, 204, 304)
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._until_close = not no_body and content_length is None and not chunked
        if self._head is not None and not self._head.done():
            self._head.set_result(
                ResponseHead(status, self._reason.decode("latin-1"), headers, content_length)
            )
        if no_body:
            # llhttp cannot be told the request was a HEAD: the exchange ends here. An app may
            # still send a body (``do_HEAD = do_GET``) or bytes after a 204/304, now or later;
            # nothing in the protocol says none will follow, and a reused connection would hand
            # them to the next request as its answer. So this connection is never reused.
            self.reusable = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self._done:  # body bytes after an answer that has none (a HEAD, say)
            raise UpstreamConnectionError("the upstream sent data nobody asked for")
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self._head is None or not self._head.done() or self._done:
            return  # the end of an interim (1xx) answer, or of one without a body
        assert self._parser is not None
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete()

    # -- internals -------------------------------------------------------------------------

    def _complete(self) -> None:
        self._done = True
        self._wake_body()

    def _fail(self, reason: str) -> None:
        """Drop the connection; the exchange fails unless its answer already ended in full."""
        self.reusable = False
        if self._error is not None:
            return
        if not self._done:
            self._error = UpstreamConnectionError(reason)
            if self._head is not None and not self._head.done():
                self._head.set_exception(self._error)
            self._wake_body()
        if self.transport is not None:
            self.transport.abort()

    def _error_text(self, default: str) -> str:
        return str(self._error) if self._error is not None else default

    def _wake_body(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None and self.transport is not None:
            waiter.set_result(None)
        else:
            waiter.set_exception(UpstreamConnectionError(f"the upstream connection broke: {exc}"))


def _declared_length(text: str | None) -> int | None:
    """The Content-Length value (llhttp already refused malformed ones), or None."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
