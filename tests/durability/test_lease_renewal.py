"""The process's lease renewer: it keeps every run's lease, and a lost lease stops its run at once.

Sagas run in this process (a ``SagaRuntime`` on the test schema, no recovery worker) under a
short lease. Another store plays the replica or operator that takes a saga over. The renewer
must keep live runs' leases past many lease periods, cut a run off the moment the store reports
its lease lost (mid-call or mid-backoff, before any further call), ride out a store outage, and
leave cancellations that are not its own alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from durability.conftest import Db, eventually, saga, step
from durability.ledger import Ledger
from saga_runner.catalog import load_definitions
from saga_runner.errors import LeaseLost
from saga_runner.records import Lease
from saga_runner.runtime import RuntimeSettings, SagaRuntime

LEASE = 0.6  # renewed every 0.2 s
SLOW_BACKOFF = {"attempts": 3, "backoff": "30s", "multiplier": 1, "max_backoff": "30s"}

OpenRuntime = Callable[..., Awaitable[SagaRuntime]]


@pytest.fixture
async def open_runtime(
    pg: Db, tmp_path: Path, ledger_upstream: tuple[Ledger, str]
) -> AsyncIterator[OpenRuntime]:
    """``await open_runtime(*saga_docs, lease=LEASE)``: a runtime on the test schema."""
    services = {"ledger": ledger_upstream[1]}
    opened: list[SagaRuntime] = []

    async def open_(*docs: dict[str, Any], lease: float = LEASE) -> SagaRuntime:
        saga_dir = tmp_path / "sagas"
        saga_dir.mkdir(exist_ok=True)
        for doc in docs:
            (saga_dir / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
        catalog = load_definitions(tmp_path, ["sagas/*.yaml"], services)
        settings = RuntimeSettings(pg.url, tmp_path, False, lease, 10.0, services)
        runtime = await SagaRuntime.open(settings, catalog)
        opened.append(runtime)
        return runtime

    yield open_
    for runtime in opened:
        await runtime.close()


async def begin(runtime: SagaRuntime, name: str, order: str) -> tuple[str, asyncio.Task[Any]]:
    """Start saga ``name`` and run it in a task, as a trigger does; its id and the task."""
    definition = runtime.catalog.by_name[name]
    created = await runtime.engine.start(definition, {"order": order}, {})
    assert created.lease is not None
    run = runtime.engine.execute(definition, created.lease, {}, input_data={"order": order})
    return created.saga.id, asyncio.create_task(run)


async def take_over(pg: Db, saga_id: str) -> Lease:
    """Claim the saga from another store, as an operator's forced retry or abort does."""
    other = await pg.open_store()
    claim = await other.claim_one(saga_id, "operator:test", 30, force=True)
    assert claim is not None
    return claim.lease


async def lease_alive(pg: Db, saga_id: str) -> bool:
    """Whether the saga's lease is unexpired by the database's clock."""
    sql = "SELECT lease_expires_at > now() FROM saga_instances WHERE id = $1"
    return bool(await pg.conn.fetchval(sql, saga_id))


async def test_runs_keep_their_leases_through_many_lease_periods_and_nobody_can_claim_them(
    open_runtime: OpenRuntime, ledger: Ledger, pg: Db
) -> None:
    ledger.script("/slow", delay=2.5 * LEASE)
    runtime = await open_runtime(saga("slow", [step("one", "/slow"), step("two", "/slow")]))
    thief = await pg.open_store()
    runs = [await begin(runtime, "slow", f"S-{n}") for n in range(20)]
    stolen = []
    while not all(task.done() for _, task in runs):
        stolen += await thief.claim_due("thief", 30, 100)
        await asyncio.sleep(0.1)

    assert stolen == [], "a running saga's lease expired"
    for saga_id, task in runs:
        assert (await task).status.value == "completed"
        assert len(ledger.of_saga(saga_id)) == 2


async def test_a_new_saga_is_kept_until_its_run_starts_and_let_go_if_it_never_does(
    open_runtime: OpenRuntime, pg: Db
) -> None:
    runtime = await open_runtime(saga("orphan", [step("one", "/one")]))
    created = await runtime.engine.start(runtime.catalog.by_name["orphan"], {"order": "O-1"}, {})
    assert created.lease is not None

    await asyncio.sleep(1.5 * LEASE)
    assert await lease_alive(pg, created.saga.id), "renewed although no run holds it yet"
    assert runtime.leases.leases == {created.lease}

    await eventually(lambda: not runtime.leases.leases, "dropped after two lease periods")
    await eventually(lambda: _not(lease_alive(pg, created.saga.id)), "then it lapses")


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_a_lost_lease_cuts_off_a_hanging_call_at_once_while_other_runs_go_on(
    open_runtime: OpenRuntime, ledger: Ledger, pg: Db
) -> None:
    gate = ledger.script("/hang", gate=threading.Event()).gate
    assert gate is not None
    runtime = await open_runtime(saga("cutoff", [step("hang", "/hang"), step("next", "/next")]))
    taken, taken_run = await begin(runtime, "cutoff", "C-1")
    kept, kept_run = await begin(runtime, "cutoff", "C-2")
    await eventually(lambda: len(ledger.calls_to("/hang")) == 2, "both runs call /hang")

    new_lease = await take_over(pg, taken)
    with pytest.raises(LeaseLost, match="is stale"):
        await asyncio.wait_for(taken_run, 10)

    assert not gate.is_set(), "the run stopped while its call was still hanging"
    row = await pg.instance(taken)
    assert (row["owner"], row["lease_version"]) == (new_lease.owner, new_lease.version)
    assert [s["status"] for s in await pg.steps(taken)] == ["running", "pending"]
    await asyncio.sleep(2 * LEASE)
    assert not kept_run.done() and await lease_alive(pg, kept)
    gate.set()
    assert (await asyncio.wait_for(kept_run, 10)).status.value == "completed"
    assert ledger.calls_to("/next", taken) == []
    assert len(ledger.calls_to("/next", kept)) == 1


async def test_a_run_waiting_out_a_backoff_stops_when_its_lease_is_lost_without_calling_again(
    open_runtime: OpenRuntime, ledger: Ledger, pg: Db
) -> None:
    ledger.script("/flaky", failures=5, fail_status=503)
    runtime = await open_runtime(saga("patient", [step("flaky", "/flaky", retry=SLOW_BACKOFF)]))
    saga_id, run = await begin(runtime, "patient", "P-1")

    async def sleeping() -> bool:
        return (await pg.steps(saga_id))[0]["next_retry_at"] is not None

    await eventually(sleeping, "the run waits 30 s for its second attempt")
    await take_over(pg, saga_id)
    started = asyncio.get_running_loop().time()
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(run, 10)

    assert asyncio.get_running_loop().time() - started < 10
    assert len(ledger.calls_to("/flaky", saga_id)) == 1
    assert len(await pg.attempts(saga_id)) == 1


async def test_renewal_keeps_trying_through_a_store_outage_and_the_lease_survives(
    open_runtime: OpenRuntime, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await open_runtime(saga("held", [step("one", "/one")]), lease=1.0)
    created = await runtime.engine.start(runtime.catalog.by_name["held"], {"order": "H-1"}, {})
    assert created.lease is not None

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", "") == "lease_renewal_failed"]

    with caplog.at_level(logging.WARNING, logger="saga_sidecar"):
        async with runtime.leases.hold(created.lease) as hold:
            await pg.conn.execute("ALTER TABLE saga_instances RENAME TO saga_instances_away")
            try:
                await eventually(failures, "a failed renewal round is logged")
            finally:
                await pg.conn.execute("ALTER TABLE saga_instances_away RENAME TO saga_instances")
            back = await pg.conn.fetchval("SELECT now()")

            async def renewed_since() -> bool:
                row = await pg.instance(created.saga.id)
                return bool(row["lease_expires_at"] > back + timedelta(seconds=0.9))

            await eventually(renewed_since, "renewals resume once the store answers")
            assert not hold.lost
    assert "saga_instances" in failures()[0].getMessage()
    assert runtime.leases.leases == frozenset()


async def test_a_cancellation_that_is_not_the_renewers_stays_a_cancellation(
    open_runtime: OpenRuntime, pg: Db
) -> None:
    runtime = await open_runtime(saga("idle", [step("one", "/one")]), lease=30)
    definition = runtime.catalog.by_name["idle"]
    holding = asyncio.Event()

    async def hold_forever(lease: Lease) -> None:
        async with runtime.leases.hold(lease):
            holding.set()
            await asyncio.sleep(3600)

    async def held_task(order: str) -> tuple[Lease, asyncio.Task[None]]:
        created = await runtime.engine.start(definition, {"order": order}, {})
        assert created.lease is not None
        holding.clear()
        task = asyncio.create_task(hold_forever(created.lease))
        await holding.wait()
        return created.lease, task

    lost_lease, lost_only = await held_task("X-1")
    await take_over(pg, lost_lease.saga_id)
    assert await runtime.leases.renew_once() == {lost_lease}
    with pytest.raises(LeaseLost):
        await lost_only

    both_lease, lost_and_cancelled = await held_task("X-2")
    await take_over(pg, both_lease.saga_id)
    assert await runtime.leases.renew_once() == {both_lease}
    lost_and_cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lost_and_cancelled

    kept_lease, cancelled_only = await held_task("X-3")
    cancelled_only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled_only
    assert runtime.leases.leases == frozenset()
    assert (await pg.instance(kept_lease.saga_id))["owner"] == kept_lease.owner


async def test_a_run_whose_last_write_released_its_lease_is_not_cut_off_by_a_renewal(
    open_runtime: OpenRuntime,
) -> None:
    runtime = await open_runtime(saga("settled", [step("one", "/one")]))
    created = await runtime.engine.start(runtime.catalog.by_name["settled"], {"order": "S-1"}, {})
    lease = created.lease
    assert lease is not None
    async with runtime.leases.hold(lease) as hold:
        hold.settle()  # what the engine does before the write that ends the saga
        assert await runtime.store.release(lease)  # that write's release, committed
        assert await runtime.leases.renew_once() == {lease}, "the store reports it gone"
        await asyncio.sleep(0)  # a cancellation would land here
    assert not hold.lost


async def test_a_run_whose_lease_cannot_be_renewed_stops_before_the_lease_can_expire(
    open_runtime: OpenRuntime, ledger: Ledger, pg: Db
) -> None:
    gate = ledger.script("/hang", gate=threading.Event()).gate
    assert gate is not None
    runtime = await open_runtime(saga("cutoff", [step("hang", "/hang")]), lease=1.0)
    saga_id, run = await begin(runtime, "cutoff", "F-1")
    await eventually(lambda: len(ledger.calls_to("/hang")) == 1, "the run calls /hang")
    expires = (await pg.instance(saga_id))["lease_expires_at"]

    await pg.conn.execute("ALTER TABLE saga_instances RENAME TO saga_instances_away")
    try:
        with pytest.raises(LeaseLost, match="could not be renewed in time"):
            await asyncio.wait_for(run, 10)
        stopped = await pg.conn.fetchval("SELECT now()")
    finally:
        await pg.conn.execute("ALTER TABLE saga_instances_away RENAME TO saga_instances")

    assert not gate.is_set(), "the hanging call was cut off"
    assert stopped < expires + timedelta(seconds=1.0), "stopped before its last renewal expired"
    row = await pg.instance(saga_id)
    assert stopped < row["lease_expires_at"], "no other replica could have claimed it yet"
    gate.set()
