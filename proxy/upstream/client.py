"""The upstream client: HTTP/1.1 requests to one origin over a pool of keep-alive connections.

What a reverse proxy needs and nothing more: the request head is serialised once into ``bytes``
(a small body goes in the same write), the answer is parsed by llhttp, and connections are
reused LIFO while they stay healthy: not past ``keepalive`` seconds idle, and not closed by the
app while in the pool. No cookies, redirects or decompression, and one retry only: a request
the app provably never got (it closed a pooled connection as the request went out, and its
kernel acknowledged no byte of the request) is sent once more on a new connection, unless its
body was a stream. Every other failure goes to the caller, who decides what may be sent again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from proxy.errors import (
    UpstreamBusy,
    UpstreamConnectionError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.upstream.connection import ResponseHead, UpstreamConnection
from proxy.upstream.response import UpstreamResponse

log = logging.getLogger("saga_sidecar.upstream")

RequestBody = bytes | AsyncIterator[bytes] | None
# Seconds a pooled connection may stay idle before it is closed rather than reused: below the
# 5 s after which Node and uvicorn close an idle connection, so the app rarely closes one first.
DEFAULT_KEEPALIVE = 4.0
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class UpstreamClient:
    """Sends requests to the origin of ``url`` (its path is prefixed to every target).

    ``timeout`` bounds each wait (connecting, the answer's headers, each body chunk, room to
    write); None leaves them unbounded, for a caller that puts one deadline on the whole
    exchange (cancelling ``send`` or a body read drops the connection).

    At most ``limit`` connections are open at once; a request waits up to ``pool_timeout`` for
    one (None: without end), and a ``client`` named in ``send`` may hold at most
    ``max_per_client`` of them (0: no cap). Past either, ``UpstreamBusy``: nothing was sent.

    ``on_body_error`` is told, once per answer, when reading an answer's body fails (it timed
    out or the connection broke after the headers), for a caller that counts upstream failures.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None,
        limit: int = 1000,
        keepalive: float = DEFAULT_KEEPALIVE,
        max_field_size: int = 64 * 1024,
        pool_timeout: float | None = None,
        max_per_client: int = 0,
        on_body_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in upstream URL {url!r}")
        secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if secure else 80)
        self.timeout = timeout
        self._ssl = ssl.create_default_context() if secure else None
        self._prefix = parts.path.rstrip("/").encode("latin-1")
        self._host_line = b"Host: " + parts.netloc.rpartition("@")[2].encode("idna") + b"\r\n"
        self._keepalive = keepalive
        self._max_field_size = max_field_size
        self._slots = asyncio.Semaphore(limit)
        self._pool_timeout = pool_timeout
        self._max_per_client = max_per_client
        self._on_body_error = on_body_error
        self._held: dict[str, int] = {}
        self._idle: list[UpstreamConnection] = []
        self._swept = 0.0
        self._closed = False

    async def send(
        self,
        method: str,
        target: bytes,
        header_lines: bytes,
        body: RequestBody,
        content_length: int | None = None,
        client: str | None = None,
    ) -> UpstreamResponse:
        """Send one request and return the answer once its headers arrived.

        ``header_lines`` are complete ``Name: value\\r\\n`` lines without Host and framing;
        ``content_length`` frames a streamed body (chunked when None); ``client`` names who
        asks (an address), for ``max_per_client``.

        Raises:
            UpstreamBusy: no connection free within ``pool_timeout``, or ``client`` holds
                ``max_per_client`` already; nothing was sent.
            UpstreamUnreachable: no connection could be made; nothing was sent.
            UpstreamReset: the connection broke, or the answer was not valid HTTP.
            UpstreamTimeout: no answer headers within ``timeout`` after the request was sent,
                or the app took no more of a streamed body for ``timeout``.
            Whatever iterating ``body`` raises (the client's body failed), after aborting.
        """
        connection, reused = await self._checkout(client)
        head = b"%s %s%s HTTP/1.1\r\n%s%s" % (
            method.encode("ascii"),
            self._prefix,
            target,
            self._host_line,
            header_lines,
        )
        try:
            try:
                response_head = await self._exchange(connection, method, head, body, content_length)
            except UpstreamConnectionError as exc:
                if not (reused and connection.unread) or _streamed(body):
                    raise
                # The app closed a pooled connection before any byte of the request reached
                # it (it closed the idle connection as the request went out): never delivered.
                log.debug("resending %s on a new connection: %s", method, exc)
                connection.abort()
                fresh = await self._connect()  # on failure the old one gives its slot back
                fresh.holder, connection.holder = connection.holder, None
                connection = fresh
                response_head = await self._exchange(connection, method, head, body, content_length)
        except UpstreamConnectionError as exc:
            self._discard(connection)
            raise UpstreamReset(f"upstream connection failed: {exc}") from exc
        except BaseException:
            self._discard(connection)
            raise
        return UpstreamResponse(
            response_head, connection, self.timeout, self._release, self._on_body_error
        )

    async def _checkout(self, client: str | None) -> tuple[UpstreamConnection, bool]:
        """A slot and a connection for it: a pooled one (True) or a new one (False)."""
        holder = self._take_share(client)
        try:
            if self._slots.locked():  # only a wait needs a deadline (and a timer)
                async with asyncio.timeout(self._pool_timeout):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError:
            self._give_share(holder)
            raise UpstreamBusy(
                f"no connection to the upstream became free within {self._pool_timeout:g}s "
                "(all of upstream.max_connections are busy)"
            ) from None
        except BaseException:
            self._give_share(holder)
            raise
        try:
            connection = self._idle_connection()
            reused = connection is not None
            connection = connection or await self._connect()
        except BaseException:
            self._free_slot(holder)
            raise
        connection.holder = holder
        return connection, reused

    def _take_share(self, client: str | None) -> str | None:
        """Count one more connection for ``client``; the key to give back (None: not counted)."""
        if client is None or not self._max_per_client:
            return None
        held = self._held.get(client, 0)
        if held >= self._max_per_client:
            raise UpstreamBusy(
                f"this client already holds {held} connections to the upstream "
                "(upstream.max_connections_per_client)"
            )
        self._held[client] = held + 1
        return client

    def _give_share(self, holder: str | None) -> None:
        if holder is None:
            return
        held = self._held[holder] - 1
        if held:
            self._held[holder] = held
        else:
            del self._held[holder]

    def _free_slot(self, holder: str | None) -> None:
        self._slots.release()
        self._give_share(holder)

    async def _exchange(
        self,
        connection: UpstreamConnection,
        method: str,
        head: bytes,
        body: RequestBody,
        content_length: int | None,
    ) -> ResponseHead:
        """Write the request on ``connection`` and wait for the answer's head.

        Raises:
            UpstreamConnectionError: the connection broke (``connection.answered`` tells
                whether any byte of an answer came first).
            UpstreamTimeout: see ``send``.
        """
        answer = connection.start(head_request=method == "HEAD")
        try:
            if body is None or isinstance(body, bytes):
                framing = _length_line(len(body)) if body else _empty_length(method)
                connection.write(head + framing + b"\r\n" + (body or b""))
            else:
                await _send_streamed(connection, head, body, content_length, answer)
            async with asyncio.timeout(self.timeout):
                return await answer
        except TimeoutError:
            connection.abort()
            raise UpstreamTimeout(f"upstream did not answer within {self.timeout:g}s") from None

    async def close(self) -> None:
        """Close the idle connections; the busy ones close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _idle_connection(self) -> UpstreamConnection | None:
        """The most recently pooled connection that is still fit to carry a request.

        One idle for ``keepalive`` or longer is closed (the app may be closing it right now),
        and so is one the app closed while it sat in the pool.
        """
        idle = self._idle
        if not idle:
            return None
        oldest_kept = asyncio.get_running_loop().time() - self._keepalive
        while idle:
            connection = idle.pop()
            if connection.idle_since > oldest_kept and not connection.stale():
                return connection
            connection.close()
        return None

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(self._max_field_size, self.timeout),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise UpstreamUnreachable(
                f"upstream unreachable: no connection to {self.host}:{self.port} "
                f"within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamUnreachable(
                f"upstream unreachable: cannot connect to {self.host}:{self.port}: {exc}"
            ) from exc
        return connection

    def _release(self, connection: UpstreamConnection) -> None:
        holder, connection.holder = connection.holder, None
        self._free_slot(holder)
        if self._closed or not (connection.finished and connection.reusable):
            connection.close()
            return
        now = asyncio.get_running_loop().time()
        connection.idle_since = now
        self._idle.append(connection)
        if now - self._swept > self._keepalive:
            self._sweep(now)

    def _discard(self, connection: UpstreamConnection) -> None:
        holder, connection.holder = connection.holder, None
        self._free_slot(holder)
        connection.abort()

    def _sweep(self, now: float) -> None:
        """Close connections idle for longer than the keep-alive time."""
        self._swept = now
        keep: list[UpstreamConnection] = []
        for connection in self._idle:
            if connection.reusable and now - connection.idle_since < self._keepalive:
                keep.append(connection)
            else:
                connection.close()
        self._idle = keep


def _streamed(body: RequestBody) -> bool:
    """Whether ``body`` is a stream (it cannot be sent a second time)."""
    return not (body is None or isinstance(body, bytes))


def _length_line(length: int) -> bytes:
    return b"Content-Length: %d\r\n" % length


def _empty_length(method: str) -> bytes:
    return b"" if method in _BODYLESS_METHODS else b"Content-Length: 0\r\n"


async def _send_streamed(
    connection: UpstreamConnection,
    head: bytes,
    body: AsyncIterator[bytes],
    content_length: int | None,
    answer: asyncio.Future[ResponseHead],
) -> None:
    """Stream ``body`` while watching for an early answer (the app may refuse it unread).

    When the app answers before the body is sent, the rest is not sent and the connection
    is not reused.
    """
    sender = asyncio.ensure_future(_write_body(connection, head, body, content_length))
    try:
        await asyncio.wait((sender, answer), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        sender.cancel()
        raise
    if not sender.done():
        connection.reusable = False
        sender.cancel()
        return
    error = sender.exception()
    if error is None:
        return
    if isinstance(error, UpstreamConnectionError) and answer.done() and not answer.exception():
        connection.reusable = False  # the app answered early and stopped reading
        return
    raise error


async def _write_body(
    connection: UpstreamConnection,
    head: bytes,
    body: AsyncIterator[bytes],
    content_length: int | None,
) -> None:
    if content_length is not None:
        connection.write(head + _length_line(content_length) + b"\r\n")
        async for chunk in body:
            connection.write(chunk)
            await _drain(connection)
        return
    connection.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
    async for chunk in body:
        if chunk:
            connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await _drain(connection)
    connection.write(b"0\r\n\r\n")


async def _drain(connection: UpstreamConnection) -> None:
    """Wait for room to write; an app that takes no more for ``write_timeout`` is a timeout."""
    try:
        await connection.drain()
    except TimeoutError:
        raise UpstreamTimeout(
            f"upstream took no more of the request body for {connection.write_timeout:g}s"
        ) from None
