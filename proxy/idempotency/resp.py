"""A pipelining RESP client for the idempotency store's hot path (EVALSHA on one connection).

redis-py's asyncio client spends 150-180 µs of CPU per command (a pooled connection checked out
and in, a command object, a reader task) where Redis itself spends 20-30 µs. This client keeps
one connection per process and pipelines automatically: every command issued during one event
loop iteration, by any number of concurrent requests, goes out in one write, and replies are
matched to callers in order by a ``hiredis`` reader in ``data_received``. It speaks only what
the store's scripts need: ``AUTH``/``SELECT`` at connect, then ``EVALSHA`` (falling back to
``EVAL``, which caches the script again, after a Redis restart flushed it).

A lost connection fails every pending command with ``ConnectionError`` and the next command
reconnects; a command is retried once on a fresh connection, as redis-py's one retry would (the
store's scripts are written so that a retried acquire/complete/release is harmless).

Each command has its own deadline, ``timeout`` after it was issued: a command without a reply by
then raises ``TimeoutError``, alone. The commands pipelined behind it keep waiting until their own
deadlines, and the late reply, when it comes, is matched to its (already failed) command and
dropped, so the reply order stays right. One slow reply is one failed request, not one per
request in flight. A connection whose oldest reply is a further ``timeout`` late (``2 * timeout``
unanswered) is taken as dead: it is closed, and the commands still within their deadline fail
with ``ConnectionError``, so each is retried once on a fresh connection. One timer per connection
watches the next deadline, rather than a timer per command.

Readiness pings through this same connection (``RedisStore.ping``), so ``/readyz`` checks the path
the traffic takes. Completion notifications (pub/sub) stay on redis-py: under RESP2 a subscribed
connection accepts nothing but (un)subscribe commands, so they could not share this connection
anyway, and redis-py's ``PubSub`` already re-subscribes after a reconnect; a waiter is woken by
them but never waits on them (it also polls), so they are off the miss path this client serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from proxy.errors import RespError

Arg = bytes | str | int


def encode_command(args: tuple[Arg, ...]) -> bytes:
    """``args`` as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _RespProtocol(asyncio.Protocol):
    """One connection: batched writes out, replies in order to their futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()
        self.expired = 0  # how many of the oldest waiters already failed on their deadline
        self.watchdog: asyncio.TimerHandle | None = None
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            self.deadlines.popleft()
            if self.expired:
                self.expired -= 1
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(RespError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ConnectionError(f"redis connection lost: {exc or 'closed by the server'}"))

    def _fail_all(self, error: Exception) -> None:
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.deadlines.clear()
        self.expired = 0
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _watch(self) -> None:
        """Fail the commands past their deadline; drop the connection once it is stalled."""
        self.watchdog = None
        if not self.deadlines:
            return
        now = self.loop.time()
        if now >= self.deadlines[0] + self.timeout:
            self._fail_all(ConnectionError(f"no reply from redis within {2 * self.timeout:g}s"))
            self.close()
            return
        while self.expired < len(self.deadlines) and self.deadlines[self.expired] <= now:
            waiter = self.waiters[self.expired]
            if not waiter.done():
                waiter.set_exception(TimeoutError(f"no reply from redis within {self.timeout:g}s"))
            self.expired += 1
        self._arm()

    def _arm(self) -> None:
        """Wake at the next deadline: an unexpired command's, or the oldest reply's stall."""
        wake = self.deadlines[0] + self.timeout
        if self.expired < len(self.deadlines):
            wake = min(wake, self.deadlines[self.expired])
        self.watchdog = self.loop.call_at(wake, self._watch)

    def call(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue ``payload`` (one encoded command) for this iteration's write; its reply."""
        if self.closed or self.transport is None:
            raise ConnectionError("redis connection is closed")
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(payload)
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        self.deadlines.append(self.loop.time() + self.timeout)
        if self.watchdog is None:
            self._arm()
        return waiter

    def _flush(self) -> None:
        batch, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(batch))

    def close(self) -> None:
        """Close the connection; pending commands fail."""
        if self.transport is not None:
            self.transport.close()


class PipelinedRedis:
    """One pipelined connection to a plain-TCP Redis (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._protocol: _RespProtocol | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def for_client(cls, client: Any) -> PipelinedRedis | None:
        """The same server and credentials as redis-py ``client``; None unless plain TCP."""
        if not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        if pool.connection_class is not Connection:  # TLS, Unix socket, Sentinel-managed
            return None
        kw = pool.connection_kwargs
        return cls(
            kw.get("host", "localhost"),
            int(kw.get("port", 6379)),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            connect_timeout=float(kw.get("socket_connect_timeout") or 1.0),
            timeout=float(kw.get("socket_timeout") or 2.0),
        )

    async def _connection(self) -> _RespProtocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _RespProtocol(loop, self.timeout), self.host, self.port
                )
                try:
                    await self._handshake(protocol)
                except BaseException:
                    protocol.close()
                    raise
            self._protocol = protocol
            return protocol

    async def _handshake(self, protocol: _RespProtocol) -> None:
        commands: list[tuple[Arg, ...]] = [(b"CLIENT", b"SETNAME", b"saga-sidecar")]
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            commands.insert(0, (b"AUTH", *auth))
        if self.db:
            commands.append((b"SELECT", self.db))
        replies = [protocol.call(encode_command(c)) for c in commands]
        await asyncio.gather(*replies)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply.

        Raises:
            RespError: Redis answered with an error.
            ConnectionError: the connection failed twice.
            TimeoutError: no connection or no reply in time.
        """
        payload = encode_command(args)
        for attempt in (1, 2):
            protocol = await self._connection()
            try:
                return await protocol.call(payload)
            except ConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def evalsha(
        self, sha: str, script: Arg | memoryview, keys: list[str], args: tuple[Arg, ...]
    ) -> Any:
        """Run a Lua script by its SHA1, sending its text once when Redis does not know it."""
        try:
            return await self.execute(b"EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        text = bytes(script) if isinstance(script, memoryview) else script
        return await self.execute(b"EVAL", text, len(keys), *keys, *args)

    async def close(self) -> None:
        """Close the connection (pending commands fail)."""
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
