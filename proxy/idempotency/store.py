"""The idempotency store interface: one lease-based lock-or-record slot per scoped key.

Each key holds nothing, an in-flight lock (``b"L"`` + owner token + request fingerprint + ``@`` +
its lease expiry in milliseconds of the store's own clock), an abandoned marker (``b"U"`` +
fingerprint: a holder's lease lapsed while its request may have been sent, so its outcome is
unknown), or a finished record (``record.encode_record``, with the result TTL). A lock taken
with ``keep`` stays in the store that long after its lease, so a sidecar killed while its request
was with the app leaves a "may have been sent" marker, not an empty key. The public methods
here hold the shared policy (tokens, lock values, decoding, waiting, the scoping secret); each
backend implements the small ``_acquire/_complete/_release/_renew`` primitives atomically and
owner-checked, so a holder whose lease was taken over can never overwrite or delete the new
holder's state. ``store_from_url`` picks the backend from the configured URL.

A scope's budget (``idempotency.max_stored_bytes_per_scope``) is a ledger per scope of the
answers stored under it, each counted with its size until its record expires: ``charge`` adds
one atomically if the scope's live total stays within the budget, so one tenant cannot fill the
store with large answers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from proxy.errors import RecordFormatError, StoreUnavailable
from proxy.idempotency.record import StoredResponse, decode_record, encode_record, without_body
from proxy.ids import UniqueIds

LOCK_MARK = b"L"
ABANDONED_MARK = b"U"
LEASE_SEPARATOR = b"@"
TOKEN_LENGTH = 32
SECRET_REFRESH_SECONDS = 10.0


@dataclass(frozen=True)
class Acquired:
    """This request holds the key's lock and must execute; ``token`` proves ownership."""

    key: str
    token: str


@dataclass(frozen=True)
class InFlight:
    """Another request holds the key's lock; ``fingerprint`` is the request it executes."""

    fingerprint: str


@dataclass(frozen=True)
class Completed:
    """The key's request finished; ``record`` is its stored answer."""

    record: StoredResponse


@dataclass(frozen=True)
class Abandoned:
    """A holder's lease lapsed after its request may have been sent: the outcome is unknown.

    Only reported under ``hold``; the caller settles the key with ``settle_abandoned``.
    """

    key: str
    fingerprint: str


AcquireResult = Acquired | InFlight | Completed | Abandoned


@dataclass(frozen=True)
class ScopeBudget:
    """Where a stored answer's bytes count: its scope, and the bytes that scope may keep."""

    scope: str
    max_bytes: int


class ChangeSignal(Protocol):
    """Wakes a waiter when a key may have changed (completed, released)."""

    async def wait(self, seconds: float) -> None:
        """Return on a change notification or after ``seconds``, whichever is first."""


_tokens = UniqueIds()


def new_token() -> str:
    """A lock owner token unique across processes and time (``TOKEN_LENGTH`` hex digits)."""
    return _tokens.next()


def lock_value(token: str, fingerprint: str) -> bytes:
    """The bytes a lock holds: mark, owner token, fingerprint of the request it executes."""
    return LOCK_MARK + token.encode() + fingerprint.encode()


def owner_prefix(token: str) -> bytes:
    """What an owner-checked write compares the stored value's start against."""
    return LOCK_MARK + token.encode()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Stored(IntEnum):
    """What ``complete`` did: ``LOST`` (falsy) when another owner holds the key."""

    LOST = 0
    OVER_LOCK = 1
    KEY_WAS_GONE = 2


class IdempotencyStore(ABC):
    """Lease-based locks and stored responses under scoped keys (see the module docstring)."""

    poll_interval = 0.5

    def __init__(self) -> None:
        self._secret: bytes | None = None
        self._secret_loaded_at = 0.0

    async def acquire(
        self,
        key: str,
        fingerprint: str,
        token: str,
        lease: float,
        keep: float | None = None,
        on_lapse: str = "release",
    ) -> AcquireResult:
        """Take the lock for ``key`` (one round trip), or report who holds it or what finished.

        ``keep`` is how long the lock stays in the store (default: its lease), so that it marks
        the key as "may have been sent" after its lease; ``on_lapse`` is what another holder's
        lapsed lease means: ``release`` takes the lock over, ``hold`` reports ``Abandoned``.

        Raises:
            StoreUnavailable: the store could not answer.
        """
        lease_ms = _ms(lease)
        keep_ms = max(lease_ms, _ms(keep)) if keep is not None else lease_ms
        current = await self._acquire(
            key, lock_value(token, fingerprint), lease_ms, keep_ms, on_lapse
        )
        return self._classify(key, token, current)

    async def wait(
        self,
        key: str,
        fingerprint: str,
        token: str,
        lease: float,
        seconds: float,
        keep: float | None = None,
        on_lapse: str = "release",
    ) -> AcquireResult:
        """Wait up to ``seconds`` for the in-flight request on ``key`` to finish.

        Wakes on the holder's completion or release (no busy polling; a slow poll is the
        fallback for a lost notification or an expired lease), then acquires again: the result
        is the finished record, the lock (the first holder released it), or still ``InFlight``.
        """
        deadline = time.monotonic() + seconds
        async with self._watch(key) as signal:
            while True:
                state = await self.acquire(key, fingerprint, token, lease, keep, on_lapse)
                remaining = deadline - time.monotonic()
                if not isinstance(state, InFlight) or remaining <= 0:
                    return state
                if state.fingerprint != fingerprint:
                    return state
                await signal.wait(min(remaining, self.poll_interval))

    async def complete(self, lock: Acquired, record: StoredResponse, ttl: float) -> Stored:
        """Store ``record`` for ``ttl`` seconds in place of the lock, unless another owner took it.

        Falsy (``Stored.LOST``) when another request's lock, record or marker holds the key.
        """
        return (await self.complete_within(lock, record, ttl, None))[1]

    async def complete_within(
        self, lock: Acquired, record: StoredResponse, ttl: float, budget: ScopeBudget | None
    ) -> tuple[StoredResponse, Stored]:
        """Replace the lock by ``record``, or by its "not retained" marker past ``budget``.

        Returns what was (or would have been) stored, and whether it was (``Stored``). The
        record's encoded bytes are charged to the budget's scope; when they do not fit, the
        smaller marker is stored uncharged, so duplicates are refused (409) and never executed
        again.
        """
        value = encode_record(record)
        if budget is not None and record.body_retained:
            charged = await self.charge(budget.scope, lock.key, len(value), ttl, budget.max_bytes)
            if not charged:
                record = without_body(record)
                value = encode_record(record)
        stored = await self._complete(lock.key, owner_prefix(lock.token), value, _ms(ttl))
        return record, Stored(stored)

    async def charge(self, scope: str, key: str, size: int, ttl: float, budget: int) -> bool:
        """Count ``size`` bytes of ``key``'s answer against ``scope`` for ``ttl`` seconds.

        False, with nothing counted, when the scope's live total would exceed ``budget``. A
        charge repeated for the same key and size (a retry whose reply was lost) counts once.
        """
        return await self._charge(scope, f"{size}:{key}", size, _ms(ttl), budget)

    async def settle_abandoned(self, state: Abandoned, record: StoredResponse, ttl: float) -> bool:
        """Store ``record`` (the unknown-outcome answer) in place of the abandoned marker.

        False when the marker is gone (another duplicate settled it first, or an operator
        released the key): the caller acquires again to see what the key holds now.
        """
        owner = ABANDONED_MARK + state.fingerprint.encode()
        value = encode_record(record)
        return await self._complete(state.key, owner, value, _ms(ttl)) == Stored.OVER_LOCK

    async def forget(self, key: str) -> bool:
        """Delete whatever ``key`` holds (an operator's release); False when it held nothing."""
        return await self._forget(key)

    async def release(self, lock: Acquired) -> bool:
        """Drop the lock so the key may be retried; False when it was no longer ours."""
        return await self._release(lock.key, owner_prefix(lock.token))

    async def renew(self, lock: Acquired, lease: float) -> bool:
        """Extend the lock's lease; False when it was no longer ours."""
        return await self._renew(lock.key, owner_prefix(lock.token), _ms(lease))

    async def secret(self) -> bytes:
        """The per-store scoping secret, created on first use and re-read every few seconds.

        The value this process knows is offered on every re-read, so a store that lost its data
        gets the same secret back from the first sidecar that notices.
        """
        age = time.monotonic() - self._secret_loaded_at
        if self._secret is None or age > SECRET_REFRESH_SECONDS:
            candidate = self._secret or secrets.token_hex(32).encode()
            self._secret = await self._load_secret(candidate)
            self._secret_loaded_at = time.monotonic()
        return self._secret

    def _classify(self, key: str, token: str, current: bytes | None) -> AcquireResult:
        if current is None:
            return Acquired(key, token)
        if current.startswith(LOCK_MARK):
            holder = current[1 : 1 + TOKEN_LENGTH].decode("ascii", "replace")
            if holder == token:  # our own earlier attempt, its reply lost and retried
                return Acquired(key, token)
            held = current[1 + TOKEN_LENGTH :].rsplit(LEASE_SEPARATOR, 1)[0]
            return InFlight(held.decode("ascii", "replace"))
        if current.startswith(ABANDONED_MARK):
            return Abandoned(key, current[1:].decode("ascii", "replace"))
        try:
            return Completed(decode_record(current))
        except RecordFormatError as exc:
            raise StoreUnavailable(f"unreadable idempotency record: {exc}") from exc

    @abstractmethod
    async def _acquire(
        self, key: str, value: bytes, lease_ms: int, keep_ms: int, on_lapse: str
    ) -> bytes | None:
        """Lock ``key`` (None) if empty, or if another owner's lease lapsed and ``on_lapse`` is
        ``release``; under ``hold`` such a lock becomes ``U`` + fingerprint. Else its value.

        The lock is ``value`` + ``@`` + expiry, kept ``keep_ms``; see ``acquire.lua``.
        """

    @abstractmethod
    async def _complete(self, key: str, owner: bytes, value: bytes, ttl_ms: int) -> int:
        """Replace a value starting with ``owner`` (1) or an empty key (2); notify waiters.

        0 when another owner's lock, a record or a marker holds ``key``.
        """

    @abstractmethod
    async def _forget(self, key: str) -> bool:
        """Delete ``key`` whatever it holds; notify waiters. False when it held nothing."""

    @abstractmethod
    async def _charge(self, scope: str, entry: str, size: int, ttl_ms: int, budget: int) -> bool:
        """Add ``entry`` (``size`` bytes, for ``ttl_ms``) to ``scope``'s ledger within ``budget``.

        Expired entries leave the ledger first; an entry already there is not counted again.
        """

    @abstractmethod
    async def _release(self, key: str, owner: bytes) -> bool:
        """If ``key`` holds a lock starting with ``owner``, delete it; notify waiters."""

    @abstractmethod
    async def _renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        """If ``key`` holds a lock starting with ``owner``, reset its expiry to ``lease_ms``."""

    @abstractmethod
    def _watch(self, key: str) -> AbstractAsyncContextManager[ChangeSignal]:
        """Subscribe to changes of ``key`` for the duration of the context."""

    @abstractmethod
    async def _load_secret(self, candidate: bytes) -> bytes:
        """Store ``candidate`` as the secret unless one exists; return the stored secret."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks."""


async def sleep_or_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return


class EventSignal:
    """One waiter's wake-up event: set by a backend on a change, cleared after each wake."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Return when notified or after ``seconds``."""
        await sleep_or_event(self.event, seconds)
        self.event.clear()


def store_from_url(url: str) -> IdempotencyStore:
    """The store for ``idempotency.store``: ``memory://`` or a Redis URL.

    Redis URLs: ``redis://``, ``rediss://``, ``redis+sentinel://``, ``redis+cluster://``; the
    ``prefix`` query parameter sets the key prefix (default ``idem``).
    """
    if url.startswith("memory:"):
        from proxy.idempotency.memory_store import MemoryStore

        return MemoryStore.from_url(url)
    from proxy.idempotency.redis_store import RedisStore

    return RedisStore.from_url(url)
