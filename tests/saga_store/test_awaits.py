"""The await primitives of both stores: callback tokens bound to one step, outcomes recorded
once, heartbeats, and exactly one winner when a callback races the end of a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from saga_runner.awaits import AwaitOutcome, Verdict, new_token, token_hash
from saga_runner.records import Lease, NewStep
from saga_runner.states import SagaStatus, StepStatus
from saga_runner.store import SagaStore, WriteBatch
from saga_runner.store.batch import StepChange
from saga_store.helpers import FakeClock, step_change, step_of

WAIT = 60.0


async def waiting_step(
    store: SagaStore, definition: str, clock: FakeClock, *, deadline: float | None = None
) -> tuple[Lease, str]:
    """A saga whose step 0 waits (``WAIT`` seconds, parked: lease released) and the token."""
    started = await store.create_instance(
        business_type="order",
        business_id=None,
        definition_hash=definition,
        mode="async",
        input_data={},
        steps=[NewStep("charge", 3)],
        owner="replica-a",
        lease_seconds=30.0,
        deadline_seconds=deadline,
    )
    assert started.lease is not None
    lease = started.lease
    token = new_token()
    await store.add_callback_token(lease.saga_id, 0, token_hash(token))
    await store.write(lease, step_change(0, StepStatus.RUNNING))
    now = store.now()
    columns = {
        "result": {"status": 202, "headers": {}, "body": {"id": "p-1"}},
        "await_kind": "callback",
        "waiting_since": now,
        "wait_until": now + timedelta(seconds=WAIT),
        "wait_seconds": WAIT,
    }
    park = WriteBatch(
        steps=(StepChange(0, StepStatus.WAITING, columns),),
        saga_columns={"next_run_at": now + timedelta(seconds=WAIT)},
        release=True,
    )
    await store.write(lease, park)
    return lease, token


async def test_a_callback_is_recorded_once_and_makes_the_saga_due(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease, token = await waiting_step(store, definition, clock)
    hashed = token_hash(token)

    answer = await store.callback(hashed, AwaitOutcome.SUCCESS, {"capture": 1})
    assert answer.verdict is Verdict.RECORDED and answer.saga_id == lease.saga_id
    assert answer.saga_name == "order"
    step = await step_of(store, lease.saga_id, 0)
    assert (step.await_outcome, step.await_result) == ("success", {"capture": 1})
    saga = await store.get_instance(lease.saga_id)
    assert saga.next_run_at == clock.now

    assert (await store.callback(hashed, AwaitOutcome.SUCCESS, 2)).verdict is Verdict.SAME
    assert (await store.callback(hashed, AwaitOutcome.FAILURE)).verdict is Verdict.CONFLICT
    assert (await store.callback(hashed, AwaitOutcome.HEARTBEAT)).verdict is Verdict.CONFLICT
    assert (await step_of(store, lease.saga_id, 0)).await_result == {"capture": 1}
    assert (await store.callback(token_hash(new_token()), AwaitOutcome.SUCCESS)).verdict is (
        Verdict.UNKNOWN
    )


async def test_a_heartbeat_moves_the_wait_and_the_wake_time(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease, token = await waiting_step(store, definition, clock)
    clock.advance(40)

    answer = await store.callback(token_hash(token), AwaitOutcome.HEARTBEAT)

    assert answer.verdict is Verdict.RECORDED
    step = await step_of(store, lease.saga_id, 0)
    assert step.wait_until == clock.now + timedelta(seconds=WAIT)
    assert (await store.get_instance(lease.saga_id)).next_run_at == step.wait_until


async def test_a_wait_past_its_timeout_refuses_callbacks_and_ends_once(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease, token = await waiting_step(store, definition, clock)
    assert not await store.stop_wait(lease.saga_id, 0, AwaitOutcome.TIMEOUT)  # not yet
    clock.advance(WAIT)

    answer = await store.callback(token_hash(token), AwaitOutcome.SUCCESS)
    assert answer.verdict is Verdict.GONE
    assert await store.stop_wait(lease.saga_id, 0, AwaitOutcome.TIMEOUT)
    assert not await store.stop_wait(lease.saga_id, 0, AwaitOutcome.TIMEOUT)
    assert (await step_of(store, lease.saga_id, 0)).await_outcome == "timeout"
    assert (await store.callback(token_hash(token), AwaitOutcome.HEARTBEAT)).verdict is (
        Verdict.GONE
    )


async def test_a_saga_past_its_deadline_refuses_callbacks_before_anyone_stopped_it(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease, token = await waiting_step(store, definition, clock, deadline=10.0)
    saga = await store.get_instance(lease.saga_id)
    assert saga.deadline_at == clock.now + timedelta(seconds=10)
    clock.advance(10)

    assert (await store.callback(token_hash(token), AwaitOutcome.SUCCESS)).verdict is Verdict.GONE
    assert await store.stop_wait(lease.saga_id, 0, AwaitOutcome.DEADLINE, force=True)


async def test_a_saga_no_longer_running_refuses_callbacks(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease, token = await waiting_step(store, definition, clock)
    claim = await store.claim_one(lease.saga_id, "operator:alice", 30.0, force=True)
    assert claim is not None
    await store.write(claim.lease, WriteBatch(saga_status=SagaStatus.COMPENSATING))

    answer = await store.callback(token_hash(token), AwaitOutcome.SUCCESS)
    assert answer.verdict is Verdict.GONE


async def test_a_callback_racing_the_end_of_its_wait_has_exactly_one_winner(
    open_store: Callable[[], Awaitable[SagaStore]], definition: str, clock: FakeClock
) -> None:
    first, second = await open_store(), await open_store()
    wins = {"callback": 0, "stop": 0}
    for _ in range(30):
        lease, token = await waiting_step(first, definition, clock)
        recorded, stopped = await asyncio.gather(
            first.callback(token_hash(token), AwaitOutcome.SUCCESS, "r"),
            second.stop_wait(lease.saga_id, 0, AwaitOutcome.DEADLINE, force=True),
        )
        won_callback = recorded.verdict is Verdict.RECORDED
        assert won_callback != stopped
        outcome = (await step_of(first, lease.saga_id, 0)).await_outcome
        assert outcome == ("success" if won_callback else "deadline")
        if not won_callback:
            assert recorded.verdict is Verdict.GONE
        wins["callback" if won_callback else "stop"] += 1
    assert sum(wins.values()) == 30
