"""TCC sagas: tries in order (groups together), then every confirm at once, or every tried
step's cancel in reverse order; confirms that run out leave the saga ``failed``, and a run
resumed mid-confirm only ever confirms.

Runs ``first → parallel [m0, m1, m2] → last`` as a TCC saga (``sagas.shapes``) on both stores
against real services.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from conftest import find_free_port

from saga_runner.errors import OperationRefused
from saga_runner.operations import SagaOperations
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from sagas.conftest import LEASE_SECONDS, EngineFactory, SidecarFactory
from sagas.harness import EngineHarness
from sagas.services import FakeServices, Reply
from sagas.shapes import MEMBER_SERVICE, MEMBERS, group_saga, start_running, stop_mid_run

STEPS = ("first", *MEMBERS, "last")


def service_of(step: str) -> str:
    return MEMBER_SERVICE.get(step, "inventory")


def calls_of(services: FakeServices, verb: str) -> list[str]:
    """The steps that got a ``verb`` (try, confirm, cancel) call, in arrival order."""
    return [c.raw_path.split("/")[2] for c in services.calls if c.raw_path.startswith(f"/{verb}/")]


async def test_every_confirm_runs_at_once_after_every_try_succeeded(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    for step in STEPS:
        services.always(service_of(step), f"POST /confirm/{step}/*", Reply(200, delay=0.4))
    engine = await make_engine(group_saga(kind="tcc"))

    run = await engine.run({})

    saga_id = run.detail.instance.id
    assert run.status is SagaStatus.COMPLETED
    tries = calls_of(services, "try")
    assert tries[0] == "first" and sorted(tries[1:4]) == sorted(MEMBERS) and tries[4] == "last"
    assert sorted(calls_of(services, "confirm")) == sorted(STEPS)
    assert calls_of(services, "cancel") == []
    confirms = [c for c in services.calls if c.raw_path.startswith("/confirm/")]
    assert max(c.at for c in confirms) - min(c.at for c in confirms) < 0.3, "not concurrent"
    last_try = max(c.at for c in services.calls if c.raw_path.startswith("/try/"))
    assert min(c.at for c in confirms) > last_try, "a confirm before every try succeeded"
    for call in services.calls:
        verb, step = call.raw_path.split("/")[1:3]
        assert call.key == f"{saga_id}:{step}:{verb}"
    assert {(s.step_name, s.phase, s.status.value) for s in run.detail.steps} == {
        (step, AttemptKind.CONFIRM, "succeeded") for step in STEPS
    }
    assert [s.stage for s in run.detail.steps] == [0, 1, 1, 1, 2]
    kinds = {(a.step_order, a.kind) for a in run.detail.attempts}
    assert kinds == {(n, k) for n in range(5) for k in (AttemptKind.TRY, AttemptKind.CONFIRM)}
    assert run.detail.instance.response["body"] == {"m0": 201}, "the try's answer"


@pytest.mark.parametrize("failing", MEMBERS)
async def test_a_failed_try_cancels_every_tried_step_in_reverse_even_an_unknown_one(
    make_engine: EngineFactory, services: FakeServices, failing: str
) -> None:
    unknown = next(m for m in MEMBERS if m != failing)
    services.always(service_of(failing), f"POST /try/{failing}", Reply(409, {"error": "no"}))
    services.always(service_of(unknown), f"POST /try/{unknown}", Reply(201, delay=0.5))
    engine = await make_engine(group_saga(kind="tcc", timeout="300ms"))

    run = await engine.run({})

    saga_id = run.detail.instance.id
    assert run.status is SagaStatus.COMPENSATED
    cancels = calls_of(services, "cancel")
    assert sorted(cancels[:3]) == sorted(MEMBERS), "every member tried, the refused one too"
    assert cancels[3:] == ["first"]
    assert calls_of(services, "confirm") == []
    assert "last" not in calls_of(services, "try")
    for call in services.calls:
        if call.raw_path.startswith("/cancel/"):
            assert call.key == f"{saga_id}:{call.raw_path.split('/')[2]}:cancel"
    steps = {s.step_name: s for s in run.detail.steps}
    assert steps["last"].status.value == "pending" and steps["last"].phase is AttemptKind.TRY
    for step in ("first", *MEMBERS):
        assert (steps[step].status.value, steps[step].phase) == (
            "compensated",
            AttemptKind.CANCEL,
        )
    assert steps[unknown].result["outcome_unknown"] is True


async def test_a_confirm_that_runs_out_leaves_the_saga_failed_and_a_retry_confirms_again(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /confirm/m1/*", Reply(500), Reply(500), Reply(503))
    engine = await make_engine(group_saga(kind="tcc"))

    run = await engine.run({})

    assert run.status is SagaStatus.FAILED
    assert calls_of(services, "cancel") == [], "never a cancel after a confirm started"
    assert calls_of(services, "confirm").count("m1") == 3
    m1 = next(s for s in run.detail.steps if s.step_name == "m1")
    assert (m1.status.value, m1.phase) == ("failed", AttemptKind.CONFIRM)
    assert run.detail.instance.failure_reason == "confirm of step m1 failed: status 503"
    others = {s.step_name: s.status.value for s in run.detail.steps if s.step_name != "m1"}
    assert set(others.values()) == {"succeeded"}

    operations = SagaOperations(engine.runtime)
    retried = await operations.retry(run.detail.instance.id, "alice")
    final = await retried.run()

    assert final.status is SagaStatus.COMPLETED
    assert calls_of(services, "confirm").count("m1") == 4
    assert len(calls_of(services, "confirm")) == 8, "the confirmed steps are not confirmed again"
    assert calls_of(services, "cancel") == []


async def test_a_run_stopped_mid_confirm_is_resumed_confirming_only(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.plan("shipping", "POST /confirm/m2/*", Reply(200, gate=gate))
    first, second = (
        await make_engine(group_saga(kind="tcc")),
        await make_engine(group_saga(kind="tcc")),
    )
    saga_id = await stop_mid_run(first, lambda saga_id: confirmed(first, saga_id, 4))
    stored = await second.runtime.store.get(saga_id)
    assert {s.phase for s in stored.steps} == {AttemptKind.CONFIRM}
    operations = SagaOperations(second.runtime)
    with pytest.raises(OperationRefused, match="confirming"):
        await operations.abort(saga_id, "alice")

    claims = await second.runtime.store.claim_due("replica-2", LEASE_SECONDS, 10)
    final = await second.runtime.engine.execute(second.definition, claims[0].lease)
    gate.set()

    assert final.status is SagaStatus.COMPLETED
    assert calls_of(services, "cancel") == []
    confirms = [c for c in services.calls if c.raw_path.startswith("/confirm/")]
    assert sorted(calls_of(services, "confirm")) == sorted([*STEPS, "m2"]), "only m2 re-sent"
    for step in STEPS:
        keys = {c.key for c in confirms if c.raw_path.split("/")[2] == step}
        assert keys == {f"{saga_id}:{step}:confirm"}


async def confirmed(engine: EngineHarness, saga_id: str, count: int) -> None:
    """Wait until ``count`` steps of the saga are recorded confirmed."""
    async with asyncio.timeout(5):
        while True:
            detail = await engine.runtime.store.get(saga_id)
            done = [
                s
                for s in detail.steps
                if s.phase is AttemptKind.CONFIRM and s.status is StepStatus.SUCCEEDED
            ]
            if len(done) >= count:
                return
            await asyncio.sleep(0.02)


async def test_a_saga_resumed_after_its_file_changed_keeps_its_shape(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /try/m1", Reply(201, gate=gate))
    first = await make_engine(group_saga(kind="tcc"))
    plain = group_saga()
    plain["steps"] = [plain["steps"][0], plain["steps"][2]]  # the same name, no group, no TCC
    plain["response"] = {"status": 200}
    second = await make_engine(plain)
    saga_id = await stop_mid_run(first, lambda _: services.wait_for_calls(4))

    claims = await second.runtime.store.claim_due("replica-2", LEASE_SECONDS, 10)
    assert [claim.saga.id for claim in claims] == [saga_id]
    assert first.definition.definition_hash not in second.runtime.catalog.by_hash
    pinned = await second.runtime.definition_for(claims[0].saga.definition_hash)
    final = await second.runtime.engine.execute(pinned, claims[0].lease)
    gate.set()

    assert pinned.kind == "tcc" and pinned.stages[1].parallel
    assert final.status is SagaStatus.COMPLETED
    assert sorted(calls_of(services, "confirm")) == sorted(STEPS)


async def test_a_sync_tcc_trigger_answers_after_the_last_confirm_and_the_api_shows_phases(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    for step in STEPS:
        services.always(service_of(step), f"POST /confirm/{step}/*", Reply(200, delay=0.2))
    sidecar = await make_sidecar(group_saga(kind="tcc"))

    status, headers, body = await sidecar.post(client, "/api/grouped", {})
    answered = time.monotonic()

    assert status == 201, body
    confirms = [c for c in services.calls if c.raw_path.startswith("/confirm/")]
    assert len(confirms) == len(STEPS)
    assert all(c.at + 0.2 <= answered for c in confirms), "answered before a confirm ended"
    async with client.get(f"{sidecar.admin_url}/sagas/{headers['Saga-Id']}") as response:
        saga = await response.json()
    assert [(s["name"], s["stage"], s["phase"]) for s in saga["steps"]] == [
        ("first", 0, "confirm"),
        ("m0", 1, "confirm"),
        ("m1", 1, "confirm"),
        ("m2", 1, "confirm"),
        ("last", 2, "confirm"),
    ]
    kinds = {a["kind"] for s in saga["steps"] for a in s["attempts"]}
    assert kinds == {"try", "confirm"}


async def test_a_cancel_is_sent_for_a_try_that_never_arrived(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = group_saga(kind="tcc")
    m2 = saga["steps"][1]["parallel"][2]
    m2["cancel"]["service"] = "payments"  # the try's service is down: nothing listens there
    services.urls["shipping"] = f"http://127.0.0.1:{find_free_port()}"
    engine = await make_engine(saga)

    run = await engine.run({})

    saga_id = run.detail.instance.id
    assert run.status is SagaStatus.COMPENSATED
    assert services.calls_to("shipping") == []
    m2_step = next(s for s in run.detail.steps if s.step_name == "m2")
    assert m2_step.result["outcome_unknown"] is False, "refused: the try was never sent"
    cancel = next(c for c in services.calls if c.raw_path.startswith("/cancel/m2/"))
    assert cancel.service == "payments" and cancel.key == f"{saga_id}:m2:cancel"
    assert sorted(calls_of(services, "cancel")[:3]) == sorted(MEMBERS)
    assert calls_of(services, "cancel")[3:] == ["first"]


async def test_an_abort_of_tries_in_flight_lets_them_finish_then_cancels(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /try/m1", Reply(201, delay=0.6))
    engine = await make_engine(group_saga(kind="tcc"))
    saga_id, running = await start_running(engine)
    await services.wait_for_calls(4)

    aborted = await SagaOperations(engine.runtime).abort(saga_id, "alice")
    final = await aborted.run()

    assert (await running).status is final.status is SagaStatus.COMPENSATED
    assert calls_of(services, "confirm") == []
    assert sorted(calls_of(services, "cancel")[:3]) == sorted(MEMBERS)
    assert calls_of(services, "cancel")[3:] == ["first"]
    tried = next(c for c in services.calls if c.raw_path == "/try/m1")
    cancel = next(c for c in services.calls if c.raw_path.startswith("/cancel/m1/"))
    assert cancel.at - tried.at >= 0.6, "cancelled before its try in flight had ended"
