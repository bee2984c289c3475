"""``redis://`` (and ``rediss://``, Sentinel, Cluster): the shared idempotency store.

One key per idempotency record, ``<prefix>:{<scoped key>}``, holding the in-flight lock (``SET NX
PX`` with a random owner token, lease = ``lock_timeout``) and then the finished record (TTL =
``ttl``). Acquire, complete, release and renew are each one Lua script (``*.lua`` next to this
module, run with EVALSHA; on a plain-TCP server through ``resp``'s pipelined connection): one
round trip, and complete/release/renew compare the owner token first, so a holder whose lease
expired cannot overwrite or delete a newer holder's state. The record's pub/sub channel
``<prefix>:{<scoped key>}:done`` shares its hash tag, as would any further key of the record, so
everything about one record lives in one Cluster slot. A scope's budget ledger is
``<prefix>:budget:{<scope>}`` (a sorted set of ``size:scoped key`` by expiry) with its live total
in ``<prefix>:budget:{<scope>}:bytes``, both kept by ``charge.lua`` and expiring with the
longest-lived answer they count.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from proxy.errors import RespError, StoreUnavailable
from proxy.idempotency.redis_client import RedisConnection, connect, parse_redis_url
from proxy.idempotency.redis_notify import CompletionListener
from proxy.idempotency.resp import PipelinedRedis
from proxy.idempotency.store import ChangeSignal, IdempotencyStore

_SCRIPTS = ("acquire", "charge", "complete", "release", "renew", "forget", "secret")
_REDIS_ERRORS = (RedisError, RedisClusterException, RespError, OSError, TimeoutError)


def _lua(name: str) -> str:
    return resources.files("proxy.idempotency").joinpath(f"{name}.lua").read_text("utf-8")


@contextlib.contextmanager
def _unavailable_on_error(operation: str) -> Iterator[None]:
    try:
        yield
    except _REDIS_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise StoreUnavailable(f"redis {operation} failed: {reason}") from exc


class RedisStore(IdempotencyStore):
    """Locks and records in Redis; see the module docstring for the key layout."""

    def __init__(self, connection: RedisConnection, prefix: str) -> None:
        super().__init__()
        self.connection = connection
        self.client = client = connection.client
        self.prefix = prefix
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(_lua(name)) for name in _SCRIPTS
        }
        self._listener = CompletionListener(client)
        # Plain-TCP Redis: the scripts go through one pipelined connection (see ``resp``);
        # TLS, Sentinel and Cluster use redis-py's clients for everything.
        self._fast = PipelinedRedis.for_client(client)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url`` (see ``redis_client`` for the accepted forms); no I/O yet."""
        target = parse_redis_url(url)
        return cls(connect(target), target.prefix)

    def redis_key(self, key: str) -> str:
        """The Redis key of scoped key ``key``; its hash tag is the scoped key."""
        return f"{self.prefix}:{{{key}}}"

    def channel(self, key: str) -> str:
        """The pub/sub channel announcing completion or release of ``key``."""
        return f"{self.prefix}:{{{key}}}:done"

    def budget_keys(self, scope: str) -> list[str]:
        """The Redis keys of ``scope``'s budget: its ledger and its live total."""
        ledger = f"{self.prefix}:budget:{{{scope}}}"
        return [ledger, f"{ledger}:bytes"]

    async def _script(self, name: str, key: str | list[str], *args: Any) -> Any:
        script = self._scripts[name]
        keys = key if isinstance(key, list) else [key]
        with _unavailable_on_error(name):
            if self._fast is not None:
                return await self._fast.evalsha(script.sha, script.script, keys, args)
            return await script(keys=keys, args=list(args))

    async def _acquire(
        self, key: str, value: bytes, lease_ms: int, keep_ms: int, on_lapse: str
    ) -> bytes | None:
        redis_key = self.redis_key(key)
        current = await self._script("acquire", redis_key, value, lease_ms, keep_ms, on_lapse)
        return current if isinstance(current, bytes) else None

    async def _complete(self, key: str, owner: bytes, value: bytes, ttl_ms: int) -> int:
        channel = self.channel(key)
        done = await self._script("complete", self.redis_key(key), owner, value, ttl_ms, channel)
        return int(done)

    async def _forget(self, key: str) -> bool:
        return bool(await self._script("forget", self.redis_key(key), self.channel(key)))

    async def _charge(self, scope: str, entry: str, size: int, ttl_ms: int, budget: int) -> bool:
        keys = self.budget_keys(scope)
        return bool(await self._script("charge", keys, entry, size, ttl_ms, budget))

    async def _release(self, key: str, owner: bytes) -> bool:
        return bool(await self._script("release", self.redis_key(key), owner, self.channel(key)))

    async def _renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        return bool(await self._script("renew", self.redis_key(key), owner, lease_ms))

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[ChangeSignal]:
        async with self._listener.watch(self.channel(key)) as signal:
            yield signal

    async def _load_secret(self, candidate: bytes) -> bytes:
        secret = await self._script("secret", f"{self.prefix}:secret", candidate)
        if not isinstance(secret, bytes) or not secret:
            raise StoreUnavailable("redis returned no scoping secret")
        return secret

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers PING on the connection the scripts use."""
        with _unavailable_on_error("ping"):
            if self._fast is not None:
                await self._fast.execute(b"PING")
            else:
                await self.client.ping()

    async def close(self) -> None:
        """Close the pub/sub listener and the connection pool."""
        await self._listener.close()
        if self._fast is not None:
            await self._fast.close()
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.connection.aclose()
