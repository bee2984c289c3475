"""Steps that await their outcome by polling: polls go out every ``every`` (no Idempotency-Key)
until an answer matches ``success`` or ``failure``, a 4xx refuses, or the timeout passes;
``Retry-After`` spaces them out; the schedule is the parked saga's ``next_run_at``.

In-process sidecars on real sockets, both saga stores, a recovery loop ticking every 50 ms, or
every 5 s where the polls must keep their own pace (the loop wakes when the next poll is due).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from saga_runner.records import SagaDetail
from saga_runner.recovery import RecoverySettings, RecoveryWorker
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from sagas.awaiting import start_order, step_in
from sagas.conftest import LEASE_SECONDS, EngineFactory, SidecarFactory
from sagas.harness import ORDER, order_saga, with_step
from sagas.services import FakeServices, Reply

FAST = {"sagas": {"recovery_interval": "50ms"}}
SLOW = {"sagas": {"recovery_interval": "5s"}}
POLLED = "GET /charges/payments-1"


def poll_attempts(detail: SagaDetail) -> list[tuple[int, int | None]]:
    """The charge's poll attempt rows: (attempt, status code)."""
    return [
        (a.attempt, a.status_code)
        for a in detail.attempts
        if a.kind is AttemptKind.POLL and a.step_order == 1
    ]


def polls_counted(samples: dict[tuple[str, str], float], outcome: str) -> float:
    """``saga_step_attempts_total`` of the charge's polls with ``outcome``."""
    labels = f"outcome=poll_{outcome},saga=order,step=charge"
    return samples.get(("saga_step_attempts_total", labels), 0)


def polled_saga(**poll: object) -> dict[str, object]:
    """The order saga, async, its ``charge`` polled at ``/charges/<its id>`` until settled."""
    settings = {
        "path": "/charges/{{ steps.charge.body.id }}",
        "every": "100ms",
        "timeout": "5s",
        "success": {"field": "body.state", "in": ["settled"]},
        "failure": {"field": "body.state", "in": ["declined"]},
        **poll,
    }
    saga = order_saga(mode="async")
    return with_step(saga, "charge", **{"await": {"poll": settings}})


async def test_polls_until_the_answer_matches_success_and_its_body_is_the_steps(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.plan(
        "payments",
        POLLED,
        Reply(200, {"state": "pending"}),
        Reply(503),
        Reply(404),
        then=Reply(200, {"state": "settled", "capture": "cap-1"}),
    )
    sidecar = await make_sidecar(polled_saga(), **FAST)
    saga_id = await start_order(sidecar, client)

    saga = await sidecar.finished(saga_id, within=10)

    assert saga.status is SagaStatus.COMPLETED
    assert saga.response["body"]["charge"] == {"state": "settled", "capture": "cap-1"}
    polls = [c for c in services.calls_to("payments") if c.method == "GET"]
    assert len(polls) == 4
    assert all(c.key is None and c.headers["saga-id"] == saga_id for c in polls)
    assert all("saga-callback" not in c.headers for c in services.calls_to("payments"))
    detail = await sidecar.runtime.store.get(saga_id)
    charge = detail.steps[1]
    assert (charge.await_kind, charge.await_outcome) == ("poll", "success")
    assert charge.result["status"] == 201  # steps.charge.status stays the action's
    assert poll_attempts(detail) == [(1, 200), (2, 503), (3, 404), (4, 200)]
    samples = await sidecar.metrics(client)
    assert (polls_counted(samples, "pending"), polls_counted(samples, "success")) == (3, 1)


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        (Reply(200, {"state": "declined"}), {"status": 200, "body": {"state": "declined"}}),
        (Reply(403, {"error": "forbidden"}), {"status": 403, "body": {"error": "forbidden"}}),
    ],
    ids=["failure-match", "refused"],
)
async def test_a_failure_answer_or_a_refusal_compensates_the_accepted_step(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    answer: Reply,
    result: dict[str, object],
) -> None:
    services.plan("payments", POLLED, Reply(200, {"state": "pending"}), then=answer)
    sidecar = await make_sidecar(polled_saga(), **FAST)
    saga_id = await start_order(sidecar, client)

    saga = await sidecar.finished(saga_id, within=10)

    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == "step charge: the service reported failure"
    assert f"payments POST /charges/by-saga/{saga_id}/refund" in services.lines()
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.steps[1].await_result == result
    assert len([c for c in services.calls_to("payments") if c.method == "GET"]) == 2
    assert poll_attempts(detail) == [(1, 200), (2, answer.status)]
    samples = await sidecar.metrics(client)
    assert (polls_counted(samples, "pending"), polls_counted(samples, "failure")) == (1, 1)


async def test_polls_stop_at_the_timeout_and_the_step_is_compensated(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", POLLED, Reply(200, {"state": "pending"}))
    sidecar = await make_sidecar(polled_saga(timeout="500ms"), **FAST)
    saga_id = await start_order(sidecar, client)

    saga = await sidecar.finished(saga_id, within=10)

    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == (
        "step charge: no outcome within the await's timeout (outcome unknown)"
    )
    polls = [c for c in services.calls_to("payments") if c.method == "GET"]
    assert 2 <= len(polls) <= 6


async def test_retry_after_spaces_polls_out_beyond_every(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.plan(
        "payments",
        POLLED,
        Reply(429, {"slow": "down"}, headers={"Retry-After": "1"}),
        then=Reply(200, {"state": "settled"}),
    )
    sidecar = await make_sidecar(polled_saga(), **FAST)
    saga_id = await start_order(sidecar, client)

    assert (await sidecar.finished(saga_id, within=10)).status is SagaStatus.COMPLETED
    first, second = [c.at for c in services.calls_to("payments") if c.method == "GET"]
    assert second - first >= 0.95


async def test_the_next_poll_is_the_parked_sagas_next_run(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", POLLED, Reply(200, {"state": "pending"}))
    sidecar = await make_sidecar(polled_saga(every="1h", timeout="2h"), **FAST)
    saga_id = await start_order(sidecar, client)

    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    saga = await sidecar.runtime.store.get_instance(saga_id)

    assert saga.owner is None
    assert step.waiting_since is not None and saga.next_run_at is not None
    assert (saga.next_run_at - step.waiting_since).total_seconds() == 3600
    assert not [c for c in services.calls_to("payments") if c.method == "GET"]


async def test_the_deciding_poll_answer_is_stored_redacted(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", POLLED, Reply(200, {"state": "settled", "cvv": "123"}))
    sidecar = await make_sidecar(polled_saga(), **FAST)
    saga_id = await start_order(sidecar, client)

    assert (await sidecar.finished(saga_id, within=10)).status is SagaStatus.COMPLETED
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.steps[1].await_result == {"state": "settled", "cvv": "[REDACTED]"}


def poll_times(services: FakeServices) -> list[float]:
    """When each poll of the charge arrived."""
    return [c.at for c in services.calls_to("payments") if c.method == "GET"]


async def test_polls_keep_every_when_the_recovery_interval_is_longer(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    pending = Reply(200, {"state": "pending"})
    services.plan(
        "payments", POLLED, pending, Reply(503), pending, then=Reply(200, {"state": "settled"})
    )
    sidecar = await make_sidecar(polled_saga(every="300ms"), **SLOW)
    saga_id = await start_order(sidecar, client)

    assert (await sidecar.finished(saga_id, within=10)).status is SagaStatus.COMPLETED
    accepted = next(c.at for c in services.calls_to("payments") if c.method == "POST")
    polls = poll_times(services)
    assert len(polls) == 4
    gaps = [later - earlier for earlier, later in zip([accepted, *polls], polls, strict=False)]
    assert all(0.28 <= gap < 1.0 for gap in gaps), gaps
    assert polls[-1] - accepted < 2.5  # the recovery interval alone would make it 5 s or more


async def test_retry_after_is_honoured_when_the_recovery_interval_is_longer(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.plan(
        "payments",
        POLLED,
        Reply(429, {"slow": "down"}, headers={"Retry-After": "1"}),
        then=Reply(200, {"state": "settled"}),
    )
    sidecar = await make_sidecar(polled_saga(every="300ms"), **SLOW)
    saga_id = await start_order(sidecar, client)

    assert (await sidecar.finished(saga_id, within=10)).status is SagaStatus.COMPLETED
    first, second = poll_times(services)
    assert 0.95 <= second - first < 2.0


async def test_a_replica_wakes_for_a_poll_another_one_parked(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan(
        "payments", POLLED, Reply(200, {"state": "pending"}), then=Reply(200, {"state": "settled"})
    )
    parking = await make_engine(polled_saga(every="500ms"))
    other = await make_engine(polled_saga(every="500ms"))
    parked = await parking.run(ORDER)
    assert parked.step_statuses()["charge"] == "waiting"
    accepted = next(c.at for c in services.calls_to("payments") if c.method == "POST")
    worker = RecoveryWorker(other.runtime, RecoverySettings(5.0, LEASE_SECONDS, 86400.0))
    worker.start()  # its first pass finds nothing due yet, but when the poll will be
    try:
        await services.wait_for_calls(2, within=4.0, service="payments")
        await asyncio.sleep(0.8)
    finally:
        await worker.stop(grace=2.0)

    polls = poll_times(services)
    assert len(polls) == 2
    assert 0.45 <= polls[0] - accepted < 1.5
    assert 0.45 <= polls[1] - polls[0] < 1.5
    detail = await other.runtime.store.get(parked.detail.instance.id)
    assert detail.instance.status is SagaStatus.COMPLETED
    assert poll_attempts(detail) == [(1, 200), (2, 200)]  # numbered across runs
