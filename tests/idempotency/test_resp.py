"""The pipelined RESP client behind the Redis store's scripts, against the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.errors import RespError
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


async def test_a_command_without_reply_times_out_and_drops_the_connection() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = PipelinedRedis("127.0.0.1", port, connect_timeout=3.0, timeout=0.2)
    try:
        await asyncio.sleep(0)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await redis.execute("PING")
        assert loop.time() - started < 2.5  # the reply timeout, not the connect timeout
        await asyncio.sleep(0.01)
        assert redis._protocol is not None and redis._protocol.closed
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
