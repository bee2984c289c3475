"""The pipelined RESP client behind the Redis store's scripts, against the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.errors import RespError, StoreUnavailable
from proxy.idempotency.redis_store import RedisStore
from proxy.idempotency.resp import PipelinedRedis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    parts = urlsplit(redis_url)
    db = int(parts.path.strip("/") or 0)
    redis = PipelinedRedis(
        parts.hostname or "127.0.0.1", parts.port or 6379, db=db, password=parts.password
    )
    yield redis
    await redis.close()


class CountingTransport:
    """Wraps a transport and counts its writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_concurrent_commands_go_out_in_one_write_and_each_caller_gets_its_reply(
    client: PipelinedRedis,
) -> None:
    await client.execute("PING")
    protocol = client._protocol
    assert protocol is not None
    counting = CountingTransport(protocol.transport)
    protocol.transport = counting  # type: ignore[assignment]
    replies = await asyncio.gather(*(client.execute("ECHO", f"v{i}") for i in range(50)))
    assert replies == [f"v{i}".encode() for i in range(50)]
    assert counting.writes == 1


async def test_a_script_redis_does_not_know_is_sent_once_then_run_by_its_sha(
    client: PipelinedRedis,
) -> None:
    script = f"-- {uuid.uuid4()}\nreturn ARGV[1] .. KEYS[1]"
    sha = (await client.execute("SCRIPT", "LOAD", script)).decode()
    unknown = f"-- {uuid.uuid4()}\nreturn ARGV[1] .. KEYS[1]"
    unknown_sha = hashlib.sha1(unknown.encode()).hexdigest()
    assert await client.execute("SCRIPT", "EXISTS", unknown_sha) == [0]
    assert await client.evalsha(unknown_sha, unknown, ["k"], ("a",)) == b"ak"
    assert await client.execute("SCRIPT", "EXISTS", unknown_sha) == [1]
    assert await client.evalsha(sha, script, ["x"], ("b",)) == b"bx"


async def test_an_error_reply_raises_resp_error_and_the_connection_stays_usable(
    client: PipelinedRedis,
) -> None:
    key = f"resp-test:{uuid.uuid4()}"
    await client.execute("SET", key, "not a number", "PX", 10_000)
    with pytest.raises(RespError, match="not an integer"):
        await client.execute("INCR", key)
    assert await client.execute("GET", key) == b"not a number"
    await client.execute("DEL", key)


async def test_a_killed_connection_is_replaced_by_the_next_command(
    client: PipelinedRedis,
) -> None:
    own_id = await client.execute("CLIENT", "ID")
    killer = PipelinedRedis(client.host, client.port, db=client.db, password=client.password)
    try:
        assert await killer.execute("CLIENT", "KILL", "ID", own_id) == 1
    finally:
        await killer.close()
    await asyncio.sleep(0.05)
    assert await client.execute("ECHO", "again") == b"again"
    assert await client.execute("CLIENT", "ID") != own_id


class Silent(asyncio.Protocol):
    """A server connection that answers the client's handshake, then never again."""

    opened: list[asyncio.Transport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened.append(transport)
        self.answered = False

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(b"+OK\r\n")


async def test_a_command_without_reply_times_out_and_a_stalled_connection_is_replaced() -> None:
    loop = asyncio.get_running_loop()
    Silent.opened = []
    server = await loop.create_server(Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = PipelinedRedis("127.0.0.1", port, connect_timeout=3.0, timeout=0.2)
    try:
        await asyncio.sleep(0)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await redis.execute("PING")
        assert loop.time() - started < 2.5  # the reply timeout, not the connect timeout
        first = redis._protocol
        assert first is not None and not first.closed  # one late reply is not a dead connection
        later = asyncio.ensure_future(redis.execute("PING"))  # issued before the stall is seen
        await asyncio.sleep(0.25)  # the first reply is now more than twice the timeout late
        assert first.closed
        with pytest.raises(TimeoutError):
            await later  # failed over to a fresh connection, which does not answer either
        assert len(Silent.opened) == 2
    finally:
        await redis.close()
        for transport in Silent.opened:
            transport.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)


async def test_nothing_listening_fails_fast_with_an_os_error(free_port: Any) -> None:
    redis = PipelinedRedis("127.0.0.1", free_port(), connect_timeout=0.5)
    with pytest.raises(OSError):
        await redis.execute("PING")


async def test_a_slow_reply_fails_only_its_own_command_not_those_pipelined_behind_it(
    client: PipelinedRedis,
) -> None:
    """BLPOP holds this connection's replies (not the server) until another client pushes."""
    client.timeout = 0.5
    key = f"resp-test:{uuid.uuid4()}"
    pusher = PipelinedRedis(client.host, client.port, db=client.db, password=client.password)
    try:
        await client.execute("PING")
        slow = asyncio.ensure_future(client.execute("BLPOP", key, 0))
        await asyncio.sleep(0.3)
        fast = asyncio.ensure_future(
            asyncio.gather(*(client.execute("ECHO", f"v{i}") for i in range(5)))
        )
        with pytest.raises(TimeoutError):
            await slow
        await asyncio.sleep(0.05)
        assert not fast.done(), "the commands behind the slow one still have time left"
        await pusher.execute("LPUSH", key, "wake")
        assert await fast == [f"v{i}".encode() for i in range(5)]
        assert await client.execute("ECHO", "after") == b"after"
    finally:
        await pusher.execute("DEL", key)
        await pusher.close()


async def test_readiness_pings_over_the_connection_the_scripts_use(redis_store_url: str) -> None:
    """While the scripts' connection cannot answer, the store is not ready."""
    store = RedisStore.from_url(redis_store_url)
    fast = store._fast
    assert fast is not None
    fast.timeout = 0.3
    key = f"{store.prefix}:blocked"
    pusher = PipelinedRedis(fast.host, fast.port, db=fast.db, password=fast.password)
    try:
        await store.ping()
        blocked = asyncio.ensure_future(fast.execute("BLPOP", key, 0))
        await asyncio.sleep(0.05)
        with pytest.raises(StoreUnavailable, match="ping"):
            await store.ping()
        await pusher.execute("LPUSH", key, "wake")
        with pytest.raises(TimeoutError):
            await blocked
        await store.ping()
    finally:
        await pusher.execute("DEL", key)
        await pusher.close()
        await store.close()
