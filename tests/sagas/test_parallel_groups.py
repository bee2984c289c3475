"""Parallel groups: members run together; a member's failure stops the others' retries, lets
the calls in flight finish, then undoes members concurrently and stages in reverse.

Runs ``first → parallel [m0, m1, m2] → last`` (``sagas.shapes``) on both stores against real
services, with one member failing for good at every position and its siblings succeeding,
timing out (outcome unknown) or failing, and asserts the exact compensations and their order.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import timedelta

import pytest

from saga_runner.operations import SagaOperations
from saga_runner.states import AttemptKind, SagaStatus
from sagas.conftest import LEASE_SECONDS, EngineFactory
from sagas.services import FakeServices, Reply
from sagas.shapes import MEMBER_SERVICE, MEMBERS, group_saga, start_running, stop_mid_run

TIMEOUT = 0.3
OUTCOMES = ("succeeded", "unknown", "failed")


def undo_line(name: str, saga_id: str) -> str:
    service = MEMBER_SERVICE.get(name, "inventory")
    return f"{service} DELETE /do/{name}/{saga_id}"


def script(services: FakeServices, member: str, outcome: str) -> None:
    """Make ``member``'s action succeed, time out (the service still did it) or be refused."""
    service = MEMBER_SERVICE[member]
    route = f"POST /do/{member}"
    if outcome == "unknown":
        services.always(service, route, Reply(201, delay=TIMEOUT + 0.2))
    elif outcome == "failed":
        services.always(service, route, Reply(422, {"error": "refused"}, delay=0.05))


async def test_two_members_that_take_a_second_each_finish_together(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = group_saga()
    saga["steps"][1]["parallel"] = saga["steps"][1]["parallel"][:2]
    for member in ("m0", "m1"):
        services.always(MEMBER_SERVICE[member], f"POST /do/{member}", Reply(201, delay=1.0))
    engine = await make_engine(saga)

    started = time.monotonic()
    run = await engine.run({})
    elapsed = time.monotonic() - started

    assert run.status is SagaStatus.COMPLETED
    assert elapsed < 1.5, f"the members ran one after another: {elapsed:.2f}s"
    m0, m1 = (next(c for c in services.calls if c.raw_path == f"/do/{m}") for m in ("m0", "m1"))
    assert abs(m0.at - m1.at) < 0.3, "the members did not start together"
    assert [(s.step_name, s.stage) for s in run.detail.steps] == [
        ("first", 0),
        ("m0", 1),
        ("m1", 1),
        ("last", 2),
    ]
    assert all(s.phase is None for s in run.detail.steps)
    assert services.lines()[-1] == "inventory POST /do/last"


@pytest.mark.parametrize(
    ("position", "siblings"),
    list(itertools.product(range(3), itertools.product(OUTCOMES, repeat=2))),
)
async def test_a_member_failing_undoes_exactly_the_members_that_may_have_taken_effect(
    make_engine: EngineFactory,
    services: FakeServices,
    position: int,
    siblings: tuple[str, str],
) -> None:
    failing = MEMBERS[position]
    others = [m for m in MEMBERS if m != failing]
    services.always(MEMBER_SERVICE[failing], f"POST /do/{failing}", Reply(409, {"error": "no"}))
    for member, outcome in zip(others, siblings, strict=True):
        script(services, member, outcome)
    engine = await make_engine(group_saga(timeout=f"{int(TIMEOUT * 1000)}ms"))

    run = await engine.run({})

    saga_id = run.detail.instance.id
    undone = {m for m, outcome in zip(others, siblings, strict=True) if outcome != "failed"}
    lines = services.lines()
    forward = [f"{MEMBER_SERVICE[m]} POST /do/{m}" for m in MEMBERS]
    assert lines[0] == "inventory POST /do/first"
    assert sorted(lines[1:4]) == sorted(forward), "each member called once, all together"
    group_undo, first_undo = lines[4:-1], lines[-1:]
    assert sorted(group_undo) == sorted(undo_line(m, saga_id) for m in undone)
    assert first_undo == [undo_line("first", saga_id)], "the earlier stage is undone last"
    assert "inventory POST /do/last" not in lines
    assert run.status is SagaStatus.COMPENSATED
    statuses = run.step_statuses()
    assert statuses[failing] == "failed" and statuses["last"] == "pending"
    for member, outcome in zip(others, siblings, strict=True):
        assert statuses[member] == ("failed" if outcome == "failed" else "compensated")
    assert run.detail.instance.failed_step == 1 + position
    unknown = [m for m, outcome in zip(others, siblings, strict=True) if outcome == "unknown"]
    for member in unknown:
        order = MEMBERS.index(member) + 1
        action, undo = (
            next(a for a in run.detail.attempts if a.step_order == order and a.kind is kind)
            for kind in (AttemptKind.ACTION, AttemptKind.COMPENSATION)
        )
        assert action.error is not None and action.duration_ms >= TIMEOUT * 1000
        ended = action.started_at + timedelta(milliseconds=action.duration_ms)
        assert undo.started_at >= ended, "undone before its call in flight had ended"
    if len(undone) == 2:
        first, second = (
            c for c in services.calls if c.raw_path.startswith("/do/m") and c.method == "DELETE"
        )
        assert second.at - first.at < TIMEOUT, "the members were undone one after another"


class Ceiling:
    """An ``rng`` whose jitter always picks the longest wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_failing_member_wakes_a_sibling_from_its_backoff_and_stops_its_retries(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    retry = {"attempts": 3, "backoff": "1s", "multiplier": 1, "max_backoff": "1s"}
    services.always("inventory", "POST /do/m0", Reply(503))
    services.always("payments", "POST /do/m1", Reply(409, delay=0.2))
    engine = await make_engine(group_saga(m0=retry))
    engine.runtime.engine.attempts.rng = Ceiling()  # type: ignore[assignment]

    started = time.monotonic()
    run = await engine.run({})

    assert time.monotonic() - started < 0.9, "waited for the sibling's backoff"
    assert run.status is SagaStatus.COMPENSATED
    assert [c.line for c in services.calls_to("inventory")].count("inventory POST /do/m0") == 1
    m0 = next(s for s in run.detail.steps if s.step_name == "m0")
    assert m0.status.value == "failed" and m0.next_retry_at is None
    assert m0.result["outcome_unknown"] is False, "a 503 says nothing was done"
    assert run.step_statuses() == {
        "first": "compensated",
        "m0": "failed",
        "m1": "failed",
        "m2": "compensated",
        "last": "pending",
    }


async def test_a_run_stopped_mid_group_is_resumed_with_the_same_keys(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /do/m1", Reply(201, gate=gate))
    first, second = await make_engine(group_saga()), await make_engine(group_saga())
    saga_id = await stop_mid_run(first, lambda _: services.wait_for_calls(4))
    stored = await second.runtime.store.get(saga_id)
    assert [s.status.value for s in stored.steps] == [
        "succeeded",
        "running",
        "running",
        "running",
        "pending",
    ]

    claims = await second.runtime.store.claim_due("replica-2", LEASE_SECONDS, 10)
    final = await second.runtime.engine.execute(second.definition, claims[0].lease)
    gate.set()

    assert final.status is SagaStatus.COMPLETED
    for member in MEMBERS:
        calls = [c for c in services.calls if c.raw_path == f"/do/{member}"]
        assert len(calls) == 2, f"{member} re-sent once"
        assert {c.key for c in calls} == {f"{saga_id}:{member}:action"}
    assert services.lines()[-1] == "inventory POST /do/last"


async def test_an_abort_lets_the_group_in_flight_finish_then_compensates_it(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /do/m1", Reply(201, delay=0.6))
    engine = await make_engine(group_saga())
    runtime = engine.runtime
    saga_id, running = await start_running(engine)
    await services.wait_for_calls(4)

    aborted = await SagaOperations(runtime).abort(saga_id, "alice")
    final = await aborted.run()

    assert (await running).status is SagaStatus.COMPENSATED
    assert final.status is SagaStatus.COMPENSATED
    assert final.failure_reason == "aborted by alice"
    sent = next(c for c in services.calls if c.raw_path == "/do/m1")
    undo = next(c for c in services.calls if c.line == undo_line("m1", saga_id))
    assert undo.at - sent.at >= 0.6, "compensated before its call in flight had ended"
    lines = services.lines()
    assert sorted(lines[4:7]) == sorted(undo_line(m, saga_id) for m in MEMBERS)
    assert lines[7:] == [undo_line("first", saga_id)]
    detail = await runtime.store.get(saga_id)
    assert [s.status.value for s in detail.steps] == ["compensated"] * 4 + ["pending"]
    m1 = detail.steps[2]
    assert m1.result["status"] == 201, "the call in flight was left to finish and recorded"
    assert [e.action for e in detail.events] == ["started", "abort", "abort_finished"]
