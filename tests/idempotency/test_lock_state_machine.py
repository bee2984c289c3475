"""A hypothesis state machine drives the real Redis store's Lua scripts through every protocol step.

Three requests for one key acquire, renew, complete, release and crash (stop calling) in any
order; the test advances time for a holder by rewriting its lock's lease expiry into the past
(what the store clock would do), and an operator may release the key. A small reference model
predicts every script's answer, and the invariants are checked against the real Lua:

1. the app executes the key at most once, plus once per lapsed lease taken over under
   ``release`` and once per key an operator released or a holder released as "not processed";
2. no answer is stored by a holder whose lease lapsed and was taken over or abandoned;
3. a lapsed lease under ``hold`` leaves the unknown-outcome answer, replayed to every later
   duplicate.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from conftest import env_redis_url
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from redis.asyncio import Redis

from idempotency.conftest import delete_prefix, with_prefix
from proxy.idempotency.record import StoredResponse
from proxy.idempotency.redis_store import RedisStore
from proxy.idempotency.store import (
    Abandoned,
    Acquired,
    Completed,
    InFlight,
    Stored,
    new_token,
)

KEY = "k"
FP = "fp"
LEASE = 30.0
KEEP = 300.0
REQUESTS = st.integers(min_value=0, max_value=2)


def answer(body: bytes) -> StoredResponse:
    """A stored answer whose body names who stored it."""
    return StoredResponse(201, (), body, FP, time.time())


class LockProtocol(RuleBasedStateMachine):
    """The reference model: what the key holds, who executed, who lost its lease."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = f"test-idem-sm-{uuid.uuid4().hex[:12]}"
        self.url = env_redis_url()
        self.store = RedisStore.from_url(with_prefix(self.url, self.prefix))
        self.raw = Redis.from_url(self.url)
        self.policy = "hold"
        self.tokens = [new_token() for _ in range(3)]
        self.holds: str | None = None  # None, "lock", "abandoned", "record"
        self.owner: int | None = None
        self.lapsed = [False, False, False]  # another request found this lease lapsed
        self.executions = 0
        self.allowance = 1
        self.answers = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.run(self.raw.aclose())
        self.run(delete_prefix(self.url, self.prefix))
        self.loop.close()

    @initialize(policy=st.sampled_from(["hold", "release"]))
    def choose_policy(self, policy: str) -> None:
        self.policy = policy

    def lock(self, i: int) -> Acquired:
        return Acquired(KEY, self.tokens[i])

    @rule(i=REQUESTS)
    def acquire(self, i: int) -> None:
        state = self.run(self.store.acquire(KEY, FP, self.tokens[i], LEASE, KEEP, self.policy))
        expired = self.holds == "lock" and self.owner != i and self._expired(self.owner)
        if self.holds is None or (expired and self.policy == "release"):
            assert isinstance(state, Acquired)
            if expired:
                assert self.owner is not None
                self.lapsed[self.owner] = True
                self.allowance += 1
            self.holds, self.owner = "lock", i
            self.expired_holders.discard(i)
            self.executions += 1
        elif self.holds == "lock" and self.owner == i:
            assert isinstance(state, Acquired)  # our own earlier attempt: not a new execution
        elif expired:
            assert isinstance(state, Abandoned)
            assert self.owner is not None
            self.lapsed[self.owner] = True
            self.holds, self.owner = "abandoned", None
            assert self.run(self.store.settle_abandoned(state, answer(b"unknown"), KEEP))
            self.holds = "record"
        elif self.holds == "lock":
            assert isinstance(state, InFlight)
        else:
            assert isinstance(state, Completed)

    def _expired(self, i: int | None) -> bool:
        return i is not None and i in self.expired_holders

    expired_holders: set[int]

    @initialize()
    def no_expiry_yet(self) -> None:
        self.expired_holders = set()

    @precondition(lambda self: self.holds == "lock")
    @rule()
    def lease_lapses(self) -> None:
        """Time passes for the holder: its lease expiry moves into the past (store clock)."""
        redis_key = self.store.redis_key(KEY)
        value = self.run(self.raw.get(redis_key))
        held = value.rsplit(b"@", 1)[0]
        self.run(self.raw.set(redis_key, held + b"@1", keepttl=True))
        self.expired_holders.add(self.owner)

    @rule(i=REQUESTS)
    def renew(self, i: int) -> None:
        renewed = self.run(self.store.renew(self.lock(i), LEASE))
        assert renewed == (self.holds == "lock" and self.owner == i)
        if renewed:
            self.expired_holders.discard(i)

    @rule(i=REQUESTS)
    def complete(self, i: int) -> None:
        self.answers += 1  # every call's record differs: equal bytes mean a retried call
        body = b"%d:%d" % (i, self.answers)
        stored = self.run(self.store.complete(self.lock(i), answer(body), KEEP))
        if self.holds == "lock" and self.owner == i:
            assert stored is Stored.OVER_LOCK
        elif self.holds is None:
            assert stored is Stored.KEY_WAS_GONE
        else:
            assert stored is Stored.LOST
        if stored:
            assert not self.lapsed[i], "a holder whose lease was taken over stored its answer"
            self.holds, self.owner = "record", None

    @rule(i=REQUESTS)
    def release_not_processed(self, i: int) -> None:
        released = self.run(self.store.release(self.lock(i)))
        assert released == (self.holds == "lock" and self.owner == i)
        if released:
            self.holds, self.owner = None, None
            self.allowance += 1

    @rule()
    def operator_releases(self) -> None:
        forgotten = self.run(self.store.forget(KEY))
        assert forgotten == (self.holds is not None)
        if forgotten:
            self.holds, self.owner = None, None
            self.allowance += 1

    @invariant()
    def executes_at_most_once_unless_released(self) -> None:
        assert self.executions <= self.allowance


LockProtocol.TestCase.settings = settings(
    max_examples=200, stateful_step_count=25, deadline=None, derandomize=True
)
test_lock_protocol_on_real_redis = LockProtocol.TestCase
