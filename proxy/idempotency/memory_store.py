"""``memory://``: the idempotency store inside one process (the embedded default).

Same semantics as the Redis store for a single process: atomic because every operation runs
without an ``await`` between its read and its write, leases and result TTLs enforced on read and
swept from a heap of expiry times. Memory is bounded (``memory://?max_bytes=256MiB``): when the
bound is reached and nothing has expired, new keys are refused with ``StoreFull`` (handled like
any store failure) instead of dropping a record early, which could let a duplicate execute.
Scope budgets are ``_Budgets``: each scope's counted answers until they expire.

Its scoping secret (used when ``key_secret`` is empty) is a fixed value, not a random one: its
records never leave the process, but saga triggers scope their keys with the same secret and
store them in the saga store, where a restarted sidecar must still find them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from proxy.errors import StoreFull
from proxy.idempotency.store import (
    ABANDONED_MARK,
    LEASE_SEPARATOR,
    LOCK_MARK,
    TOKEN_LENGTH,
    ChangeSignal,
    EventSignal,
    IdempotencyStore,
)
from yamlconfig.units import parse_size

DEFAULT_MAX_BYTES = 256 * 1024**2
SECRET = b"saga-sidecar memory:// scoping secret"


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _held(lock: bytes) -> bytes:
    """A lock's value without its ``@expiry`` suffix."""
    return lock.rpartition(LEASE_SEPARATOR)[0] or lock


_ENTRY_OVERHEAD = 200


@dataclass
class _Entry:
    value: bytes
    expires_at: float

    def size(self, key: str) -> int:
        return len(key) + len(self.value) + _ENTRY_OVERHEAD


class _Budgets:
    """Every scope's counted answers (``charge``), each until its expiry (one heap for all)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, int]] = {}
        self.totals: dict[str, int] = {}
        self.expiries: list[tuple[float, str, str]] = []

    def charge(self, scope: str, entry: str, size: int, ttl_ms: int, budget: int) -> bool:
        now = time.monotonic()
        self._prune(now)
        counted = self.entries.setdefault(scope, {})
        if entry in counted:
            return True
        if self.totals.get(scope, 0) + size > budget:
            return False
        counted[entry] = size
        self.totals[scope] = self.totals.get(scope, 0) + size
        heapq.heappush(self.expiries, (now + ttl_ms / 1000, scope, entry))
        return True

    def _prune(self, now: float) -> None:
        while self.expiries and self.expiries[0][0] <= now:
            _, scope, entry = heapq.heappop(self.expiries)
            self.totals[scope] -= self.entries[scope].pop(entry)
            if not self.entries[scope]:
                del self.entries[scope], self.totals[scope]


class MemoryStore(IdempotencyStore):
    """Locks and records in a dict, bounded by ``max_bytes``, with lazy and swept expiry."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self._entries: dict[str, _Entry] = {}
        self._expiries: list[tuple[float, str]] = []
        self._waiters: dict[str, set[EventSignal]] = {}
        self._bytes = 0
        self._budgets = _Budgets()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` with an optional ``max_bytes`` query parameter (``64MiB``...)."""
        query = parse_qs(urlsplit(url).query)
        sizes = query.get("max_bytes")
        return cls(parse_size(sizes[-1]) if sizes else DEFAULT_MAX_BYTES)

    @property
    def used_bytes(self) -> int:
        """Approximate bytes held by live entries."""
        return self._bytes

    async def _acquire(
        self, key: str, value: bytes, lease_ms: int, keep_ms: int, on_lapse: str
    ) -> bytes | None:
        current = self._get(key)
        if current is not None and self._lapsed(current.value, value):
            if on_lapse != "release":
                marker = ABANDONED_MARK + _held(current.value)[1 + TOKEN_LENGTH :]
                self._rewrite(key, current, marker)
                return marker
            self._delete(key)
            current = None
        if current is not None:
            return current.value
        self._put(key, value + LEASE_SEPARATOR + str(_now_ms() + lease_ms).encode(), keep_ms)
        return None

    async def _complete(self, key: str, owner: bytes, value: bytes, ttl_ms: int) -> int:
        entry = self._get(key)
        if entry is not None and entry.value == value:
            return 1
        if entry is not None and not entry.value.startswith(owner):
            return 0
        self._put(key, value, ttl_ms, replacing=entry is not None)
        self._notify(key)
        return 1 if entry is not None else 2

    async def _forget(self, key: str) -> bool:
        if self._get(key) is None:
            return False
        self._delete(key)
        return True

    async def _charge(self, scope: str, entry: str, size: int, ttl_ms: int, budget: int) -> bool:
        return self._budgets.charge(scope, entry, size, ttl_ms, budget)

    async def _release(self, key: str, owner: bytes) -> bool:
        if not self._owned(key, owner):
            return False
        self._delete(key)
        return True

    async def _renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        entry = self._get(key)
        if entry is None or not entry.value.startswith(owner):
            return False
        lease_end = str(_now_ms() + lease_ms).encode()
        self._rewrite(key, entry, _held(entry.value) + LEASE_SEPARATOR + lease_end)
        lease_ends = time.monotonic() + lease_ms / 1000
        if entry.expires_at < lease_ends:
            entry.expires_at = lease_ends
            heapq.heappush(self._expiries, (lease_ends, key))
        return True

    @asynccontextmanager
    async def _watch(self, key: str) -> AsyncIterator[ChangeSignal]:
        signal = EventSignal()
        self._waiters.setdefault(key, set()).add(signal)
        try:
            yield signal
        finally:
            waiters = self._waiters[key]
            waiters.discard(signal)
            if not waiters:
                del self._waiters[key]

    async def _load_secret(self, candidate: bytes) -> bytes:
        return SECRET

    async def ping(self) -> None:
        """Always answers: the store lives in this process."""

    async def close(self) -> None:
        """Drop everything and wake every waiter."""
        for key in list(self._waiters):
            self._notify(key)
        self._entries.clear()
        self._expiries.clear()
        self._bytes = 0
        self._budgets = _Budgets()

    def _owned(self, key: str, owner: bytes) -> bool:
        entry = self._get(key)
        return entry is not None and entry.value.startswith(owner)

    def _rewrite(self, key: str, entry: _Entry, value: bytes) -> None:
        """Change an entry's value in place, keeping its expiry and the byte count true."""
        self._bytes -= entry.size(key)
        entry.value = value
        self._bytes += entry.size(key)

    @staticmethod
    def _lapsed(current: bytes, offered: bytes) -> bool:
        """Whether ``current`` is another owner's lock whose lease expired (see acquire.lua)."""
        owner = 1 + TOKEN_LENGTH
        if not current.startswith(LOCK_MARK) or current[:owner] == offered[:owner]:
            return False
        expiry = current.rpartition(LEASE_SEPARATOR)[2]
        return expiry.isdigit() and int(expiry) <= _now_ms()

    def _get(self, key: str) -> _Entry | None:
        self._sweep()
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= time.monotonic():
            self._delete(key)
            return None
        return entry

    def _put(self, key: str, value: bytes, ttl_ms: int, *, replacing: bool = False) -> None:
        old = self._entries.get(key)
        entry = _Entry(value, time.monotonic() + ttl_ms / 1000)
        grow = entry.size(key) - (old.size(key) if old else 0)
        if self._bytes + grow > self.max_bytes and not replacing:
            raise StoreFull(
                f"memory:// store is full ({self._bytes} of {self.max_bytes} bytes in use)"
            )
        self._entries[key] = entry
        self._bytes += grow
        heapq.heappush(self._expiries, (entry.expires_at, key))

    def _delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size(key)
        self._notify(key)

    def _notify(self, key: str) -> None:
        for signal in self._waiters.get(key, ()):
            signal.event.set()

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                self._delete(key)
