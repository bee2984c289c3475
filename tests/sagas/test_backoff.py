"""Backoff between attempts: exponential ceilings, Retry-After, persisted before each wait.

``AttemptLoop``'s sleep is replaced by a recorder that returns at once and snapshots the store
at the moment the engine would sleep, so long waits are tested without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from saga_runner.records import SagaDetail
from saga_runner.states import SagaStatus
from saga_runner.store import SagaStore
from sagas.conftest import EngineFactory
from sagas.harness import EngineHarness, order_saga, with_step
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 5, "items": []}


class HighestDraw:
    """A ``random.Random`` stand-in whose full-jitter draw is always the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        """The upper bound."""
        return b


@dataclass
class SleepRecorder:
    """Records each requested wait and what the store held at that moment; never waits."""

    store: SagaStore
    saga_id: str = ""
    delays: list[float] = field(default_factory=list)
    seen: list[SagaDetail] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.seen.append(await self.store.get(self.saga_id))


async def run_recorded(engine: EngineHarness) -> tuple[SagaDetail, SleepRecorder]:
    """Run the saga with the recorder as the engine's sleep."""
    recorder = SleepRecorder(engine.runtime.store)
    attempts = engine.runtime.engine.attempts
    attempts.sleep = recorder
    attempts.rng = HighestDraw()  # type: ignore[assignment]
    created = await engine.runtime.engine.start(engine.definition, ORDER, {}, None)
    assert created.lease is not None
    recorder.saga_id = created.saga.id
    await engine.runtime.engine.execute(engine.definition, created.lease, {}, input_data=ORDER)
    return await engine.runtime.store.get(created.saga.id), recorder


async def test_waits_grow_by_the_multiplier_up_to_the_cap_and_are_persisted_first(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", *[Reply(500)] * 4)
    retry = {"attempts": 5, "backoff": "100ms", "multiplier": 3, "max_backoff": "500ms"}
    engine = await make_engine(with_step(order_saga(), "charge", retry=retry))

    detail, recorder = await run_recorded(engine)

    assert detail.instance.status is SagaStatus.COMPLETED
    assert recorder.delays == pytest.approx([0.1, 0.3, 0.5, 0.5])
    for number, (delay, seen) in enumerate(zip(recorder.delays, recorder.seen, strict=True), 1):
        charge = seen.steps[1]
        assert charge.status.value == "running" and charge.retry_count == number
        assert charge.error == "status 500" and charge.result["status"] == 500
        assert charge.next_retry_at is not None
        assert seen.instance.next_run_at == charge.next_retry_at
        planned = (charge.next_retry_at - charge.updated_at).total_seconds()
        assert delay - 0.05 < planned <= delay
        assert len([a for a in seen.attempts if a.step_order == 1]) == number
    assert detail.steps[1].next_retry_at is None and detail.instance.next_run_at is None


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_long_retry_after_on_a_503_replaces_the_short_backoff(
    make_engine: EngineFactory, services: FakeServices, form: str
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    value = "120" if form == "seconds" else when
    services.plan("shipping", "POST /shipments", Reply(503, headers={"Retry-After": value}))
    engine = await make_engine(with_step(order_saga(), "ship", retry={"max_backoff": "300s"}))

    detail, recorder = await run_recorded(engine)

    assert detail.instance.status is SagaStatus.COMPLETED
    (delay,) = recorder.delays
    assert delay == pytest.approx(120, abs=2)
    ship = recorder.seen[0].steps[2]
    assert ship.next_retry_at is not None
    planned = (ship.next_retry_at - ship.updated_at).total_seconds()
    assert delay - 0.5 < planned <= delay


async def test_a_compensation_backs_off_with_its_own_policy(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan("payments", "POST /charges/*/refund", Reply(502), Reply(502))
    saga = with_step(
        order_saga(),
        "charge",
        compensation={"retry": {"attempts": 3, "backoff": "1s", "multiplier": 4}},
    )
    engine = await make_engine(saga)

    detail, recorder = await run_recorded(engine)

    assert detail.instance.status is SagaStatus.COMPENSATED
    assert recorder.delays == pytest.approx([1.0, 4.0])
    assert [seen.steps[1].status.value for seen in recorder.seen] == ["compensating"] * 2
    assert all(seen.steps[1].next_retry_at is not None for seen in recorder.seen)
    assert all(seen.steps[1].result["status"] == 201 for seen in recorder.seen)
