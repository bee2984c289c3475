"""Completion notifications over Redis pub/sub, shared by every waiter of one process.

The complete and release scripts ``PUBLISH`` on the record's channel. A waiting duplicate
subscribes to that channel through one shared pub/sub connection (subscribed per channel only
while someone waits on it) and is woken when the message arrives. Notifications are an
optimisation: a waiter re-reads the key after subscribing and also polls slowly, so a lost message,
a broken connection or an expired lease only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisClusterException, RedisError

from proxy.idempotency.redis_client import RedisClient
from proxy.idempotency.store import ChangeSignal, EventSignal, sleep_or_event

log = logging.getLogger("saga_sidecar.idempotency")

CONFIRM_TIMEOUT = 0.5
RECONNECT_DELAY = 0.5
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


class CompletionListener:
    """One pub/sub connection; per-channel subscriptions while waiters exist."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._signals: dict[bytes, set[EventSignal]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}

    @asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[ChangeSignal]:
        """Be woken on messages to ``channel`` while inside the context."""
        name = channel.encode()
        signal = EventSignal()
        self._signals.setdefault(name, set()).add(signal)
        try:
            await self._ensure_subscribed(name)
            yield signal
        finally:
            waiters = self._signals[name]
            waiters.discard(signal)
            if not waiters:
                del self._signals[name]
                await self._unsubscribe(name)

    async def close(self) -> None:
        """Stop reading and close the pub/sub connection."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
            self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._pubsub.aclose()
            self._pubsub = None

    async def _ensure_subscribed(self, name: bytes) -> None:
        confirmed = self._confirmed.get(name)
        if confirmed is None:
            confirmed = self._confirmed[name] = asyncio.Event()
            try:
                async with self._lock:
                    if self._pubsub is None:
                        self._pubsub = self._client.pubsub()
                    await self._pubsub.subscribe(name)
            except _REDIS_ERRORS as exc:
                log.debug("pub/sub subscribe failed, polling instead: %r", exc)
                self._confirmed.pop(name, None)
                return
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="idempotency-notify")
        await sleep_or_event(confirmed, CONFIRM_TIMEOUT)

    async def _unsubscribe(self, name: bytes) -> None:
        self._confirmed.pop(name, None)
        if self._pubsub is None:
            return
        try:
            async with self._lock:
                await self._pubsub.unsubscribe(name)
        except _REDIS_ERRORS as exc:
            log.debug("pub/sub unsubscribe failed: %r", exc)

    async def _read(self) -> None:
        while self._pubsub is not None:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (*_REDIS_ERRORS, RuntimeError) as exc:
                log.debug("pub/sub read failed, reconnecting: %r", exc)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if message:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        if message.get("type") == "subscribe" and channel in self._confirmed:
            self._confirmed[channel].set()
        elif message.get("type") == "message":
            for signal in self._signals.get(channel, ()):
                signal.event.set()
