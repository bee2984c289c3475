"""A hypothesis state machine drives the real saga-store leases with three replicas.

Each replica is a ``SagaStore`` of its own (own connections) on one fresh database, and all of
them read one ``FakeClock``, which the test moves forward. In any order the replicas claim due
sagas, claim one saga (forced or not), renew one lease or all of theirs, make fenced writes,
release (alone or with a write), and crash (forget every lease they hold). A replica keeps what
it believes: each lease it holds and the expiry it asked for. After every step, and in the rules
themselves, the real SQL is checked against these invariants:

1. at most one replica holds a lease it believes live that the row agrees with (owner and
   version), and that lease's expiry is the row's;
2. a claim never takes a saga another replica holds a live lease on unless forced, and
   ``claim_due`` takes exactly the sagas nobody holds;
3. a fenced write, renewal or release succeeds exactly when the row still names the lease; a
   refused write raises ``LeaseLost`` and leaves the row's data unchanged;
4. ``lease_version`` strictly increases with every claim.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from saga_runner.errors import LeaseLost
from saga_runner.records import Claim, Lease, SagaInstance
from saga_runner.store import SagaStore, WriteBatch
from saga_store.helpers import FakeClock, Target, start_saga

REPLICAS = st.integers(min_value=0, max_value=2)
SAGAS = st.integers(min_value=0, max_value=1)
LEASE_SECONDS = st.sampled_from([5.0, 10.0])
STEPS_OF_TIME = st.sampled_from([0.5, 1.0, 3.0, 5.0, 9.5, 12.0])

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Held:
    """A lease as its replica believes it: the lease and the expiry it asked for."""

    lease: Lease
    expires: datetime


class LeaseProtocol(RuleBasedStateMachine):
    """Three replicas and two sagas, with what each replica believes it holds."""

    def __init__(self, fresh: Any) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = FakeClock()
        target: Target = self.run(fresh())
        self.stores: list[SagaStore] = [self.run(target.open(self.clock)) for _ in range(3)]
        store = self.stores[0]
        saved = self.run(store.save_definition("def-v1", "payment", {"name": "payment"}))
        self.saga_ids: list[str] = []
        self.versions: dict[str, int] = {}
        for _ in range(2):
            created = self.run(start_saga(store, saved.hash, owner="creator", lease_seconds=5))
            assert created.lease is not None
            assert self.run(store.release(created.lease))
            self.saga_ids.append(created.saga.id)
            self.versions[created.saga.id] = created.lease.version
        self.held: list[dict[str, Held]] = [{}, {}, {}]
        self.writes = 0

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        for store in self.stores:
            self.run(store.close())
        self.runner.close()

    # -- what the database says -------------------------------------------------------------

    def row(self, saga_id: str) -> SagaInstance:
        instance: SagaInstance = self.run(self.stores[0].get_instance(saga_id))
        return instance

    def live(self, row: SagaInstance) -> bool:
        return row.lease_expires_at is not None and row.lease_expires_at > self.clock.now

    @staticmethod
    def names(row: SagaInstance, lease: Lease) -> bool:
        return (row.owner, row.lease_version) == (lease.owner, lease.version)

    def believed_live_elsewhere(self, replica: int, saga_id: str) -> bool:
        """Whether another replica holds a lease it believes live that the row agrees with."""
        row = self.row(saga_id)
        for other, held in enumerate(self.held):
            mine = held.get(saga_id)
            if other == replica or mine is None:
                continue
            if mine.expires > self.clock.now and self.names(row, mine.lease):
                return True
        return False

    def took(self, replica: int, claim: Claim, lease_seconds: float) -> None:
        saga_id = claim.saga.id
        assert claim.lease.version > self.versions[saga_id], "lease_version must increase"
        assert claim.lease.owner == f"replica-{replica}"
        self.versions[saga_id] = claim.lease.version
        expires = self.clock.now + timedelta(seconds=lease_seconds)
        assert claim.saga.lease_expires_at == expires
        self.held[replica][saga_id] = Held(claim.lease, expires)

    # -- rules ------------------------------------------------------------------------------

    @rule(replica=REPLICAS, seconds=LEASE_SECONDS)
    def claim_due(self, replica: int, seconds: float) -> None:
        free = {s for s in self.saga_ids if not self.live(self.row(s))}
        guarded = {s for s in self.saga_ids if self.believed_live_elsewhere(replica, s)}
        claims = self.run(self.stores[replica].claim_due(f"replica-{replica}", seconds, 10))
        assert {c.saga.id for c in claims} == free
        assert not free & guarded, "a lease believed live was claimable"
        for claim in claims:
            self.took(replica, claim, seconds)

    @rule(replica=REPLICAS, saga=SAGAS, seconds=LEASE_SECONDS, force=st.booleans())
    def claim_one(self, replica: int, saga: int, seconds: float, force: bool) -> None:
        saga_id = self.saga_ids[saga]
        was_live = self.live(self.row(saga_id))
        store = self.stores[replica]
        claim = self.run(store.claim_one(saga_id, f"replica-{replica}", seconds, force=force))
        if force or not was_live:
            assert claim is not None
            self.took(replica, claim, seconds)
        else:
            assert claim is None
            assert self.versions[saga_id] == self.row(saga_id).lease_version

    @rule(replica=REPLICAS, saga=SAGAS, seconds=LEASE_SECONDS)
    def renew(self, replica: int, saga: int, seconds: float) -> None:
        held = self.held[replica].get(self.saga_ids[saga])
        if held is None:
            return
        named = self.names(self.row(held.lease.saga_id), held.lease)
        renewed = self.run(self.stores[replica].renew(held.lease, seconds))
        assert renewed == named
        self.keep(replica, held.lease, renewed, seconds)

    @rule(replica=REPLICAS, seconds=LEASE_SECONDS)
    def renew_many(self, replica: int, seconds: float) -> None:
        leases = [held.lease for held in self.held[replica].values()]
        stale = {lease for lease in leases if not self.names(self.row(lease.saga_id), lease)}
        lost = self.run(self.stores[replica].renew_many(leases, seconds))
        assert lost == stale
        for lease in leases:
            self.keep(replica, lease, lease not in lost, seconds)

    def keep(self, replica: int, lease: Lease, renewed: bool, seconds: float) -> None:
        if renewed:
            expires = self.clock.now + timedelta(seconds=seconds)
            assert self.row(lease.saga_id).lease_expires_at == expires
            self.held[replica][lease.saga_id] = Held(lease, expires)
        else:
            del self.held[replica][lease.saga_id]

    @rule(replica=REPLICAS, saga=SAGAS, release=st.booleans())
    def fenced_write(self, replica: int, saga: int, release: bool) -> None:
        held = self.held[replica].get(self.saga_ids[saga])
        if held is None:
            return
        before = self.row(held.lease.saga_id)
        self.writes += 1
        data = {"by": replica, "write": self.writes}
        batch = WriteBatch(saga_columns={"response": data}, release=release)
        try:
            written = self.run(self.stores[replica].write(held.lease, batch))
        except LeaseLost:
            assert not self.names(before, held.lease), "a write under a live lease was refused"
            after = self.row(held.lease.saga_id)
            assert after.response == before.response, "a refused write changed the row"
            assert after.updated_at == before.updated_at
            del self.held[replica][held.lease.saga_id]
            return
        assert self.names(before, held.lease), "a stale lease's write committed"
        after = self.row(held.lease.saga_id)
        assert written.response == data == after.response
        if release:
            assert (after.owner, after.lease_expires_at) == (None, None)
            del self.held[replica][held.lease.saga_id]

    @rule(replica=REPLICAS, saga=SAGAS)
    def release(self, replica: int, saga: int) -> None:
        held = self.held[replica].pop(self.saga_ids[saga], None)
        if held is None:
            return
        named = self.names(self.row(held.lease.saga_id), held.lease)
        released = self.run(self.stores[replica].release(held.lease))
        assert released == named
        after = self.row(held.lease.saga_id)
        if released:
            assert (after.owner, after.lease_expires_at) == (None, None)
        assert after.lease_version == self.versions[held.lease.saga_id]

    @rule(seconds=STEPS_OF_TIME)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: any(self.held))
    @rule(replica=REPLICAS)
    def crash(self, replica: int) -> None:
        self.held[replica] = {}

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def one_live_holder_agreed_by_the_row(self) -> None:
        for saga_id in self.saga_ids:
            row = self.row(saga_id)
            assert row.lease_version == self.versions[saga_id]
            holders = [
                held
                for replica in self.held
                if (held := replica.get(saga_id)) is not None
                and held.expires > self.clock.now
                and self.names(row, held.lease)
            ]
            assert len(holders) <= 1, f"two live holders of {saga_id}: {holders}"
            for held in holders:
                assert row.lease_expires_at == held.expires


def fresh_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """``await fresh()``: an empty, migrated database for one example."""
    shared: Target | None = None
    if backend == "postgres":
        shared = request.getfixturevalue("pg_session_schema")

    async def fresh() -> Target:
        if shared is None:
            target = Target.sqlite(tmp_path / f"sagas-{uuid.uuid4().hex[:8]}.db")
            await target.migrate()
            return target
        await shared.truncate()
        return shared

    return fresh


def test_leases_hold_their_invariants_under_any_interleaving(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fresh = fresh_database(backend, tmp_path, request)
    run_state_machine_as_test(lambda: LeaseProtocol(fresh), settings=SETTINGS)
