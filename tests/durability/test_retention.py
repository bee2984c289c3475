"""Retention deletes old ``completed``/``compensated`` sagas only, in bounded batches, one replica
at a time.

Sagas are recorded "in the past" through a store whose clock is set days back, so age is real
data in the rows, not a mocked clock in the code under test.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from saga_store.helpers import FakeClock, saga_change

from durability.conftest import Db, SagaCluster, eventually
from saga_runner.catalog import SagaCatalog
from saga_runner.records import NewStep
from saga_runner.recovery import RecoverySettings, RecoveryWorker
from saga_runner.runtime import RuntimeSettings, SagaRuntime
from saga_runner.states import SagaStatus
from saga_runner.store import SagaStore

DAY = 86400.0
PATHS = {
    SagaStatus.RUNNING: (),
    SagaStatus.COMPENSATING: (SagaStatus.COMPENSATING,),
    SagaStatus.COMPLETED: (SagaStatus.COMPLETED,),
    SagaStatus.COMPENSATED: (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED),
    SagaStatus.FAILED: (SagaStatus.FAILED,),
}


async def record(
    store: SagaStore, status: SagaStatus, count: int, *, lease: float = 60
) -> set[str]:
    """Create ``count`` sagas and move each to ``status``; return their ids."""
    await store.save_definition("retention-def", "kept", {"name": "kept"})
    ids = set()
    for _ in range(count):
        created = await store.create_instance(
            business_type="kept",
            business_id=None,
            definition_hash="retention-def",
            mode="async",
            input_data={},
            steps=[NewStep("only", 1)],
            owner="seeder",
            lease_seconds=lease,
        )
        assert created.lease is not None
        for status_on_the_way in PATHS[status]:
            await store.write(created.lease, saga_change(status_on_the_way))
        ids.add(created.saga.id)
    return ids


async def remaining(pg: Db) -> set[str]:
    """The ids still in ``saga_instances``."""
    return {r["id"] for r in await pg.conn.fetch("SELECT id FROM saga_instances")}


async def old_store(pg: Db, days: float = 3) -> SagaStore:
    """A store whose "now" is ``days`` ago."""
    return await pg.open_store(FakeClock(datetime.now(UTC) - timedelta(days=days)))


async def test_retention_deletes_only_old_finished_sagas_in_bounded_batches(pg: Db) -> None:
    past, present = await old_store(pg), await pg.open_store()
    old_done = await record(past, SagaStatus.COMPLETED, 12)
    old_done |= await record(past, SagaStatus.COMPENSATED, 5)
    kept = await record(past, SagaStatus.FAILED, 3)
    kept |= await record(past, SagaStatus.RUNNING, 2)
    kept |= await record(past, SagaStatus.COMPENSATING, 2)
    kept |= await record(present, SagaStatus.COMPLETED, 3)
    kept |= await record(present, SagaStatus.COMPENSATED, 1)
    settings = RuntimeSettings(pg.url, Path.cwd(), False, 1.0, 5.0, {})
    runtime = await SagaRuntime.open(settings, SagaCatalog())
    try:
        worker = RecoveryWorker(
            runtime,
            RecoverySettings(
                interval=1, lease_seconds=1, retention_seconds=DAY,
                retention_batch=5, retention_max_batches=2,
            ),
        )  # fmt: skip
        deleted = [await worker.prune(), await worker.prune(), await worker.prune()]
    finally:
        await runtime.close()

    assert deleted == [10, 7, 0]
    assert await remaining(pg) == kept
    orphans = "SELECT count(*) FROM saga_steps WHERE saga_id <> ALL($1::text[])"
    assert await pg.conn.fetchval(orphans, list(kept)) == 0
    assert old_done.isdisjoint(await remaining(pg))


async def test_sidecar_recovery_loop_prunes_old_finished_sagas(
    pg: Db, cluster: SagaCluster
) -> None:
    past, present = await old_store(pg, days=2), await pg.open_store()
    doomed = await record(past, SagaStatus.COMPLETED, 4)
    doomed |= await record(past, SagaStatus.COMPENSATED, 2)
    kept = await record(past, SagaStatus.FAILED, 2)
    kept |= await record(present, SagaStatus.COMPLETED, 2)
    # Held by a live replica, so this sidecar leaves it alone (no definition to resume it).
    kept |= await record(past, SagaStatus.RUNNING, 1, lease=3 * DAY)

    cluster.start(sagas={"retention": "1d"})

    async def pruned() -> bool:
        return await remaining(pg) == kept

    await eventually(pruned, "old finished sagas deleted")


async def test_two_concurrent_prunes_do_not_both_delete(pg: Db) -> None:
    doomed = await record(await old_store(pg), SagaStatus.COMPLETED, 10)
    first, second = await pg.open_store(), await pg.open_store()
    cutoff = datetime.now(UTC) - timedelta(days=1)
    blocker = await pg.open_connection()
    blocking = blocker.transaction()
    await blocking.start()
    # Hold the first prune inside its delete (the cascade to saga_steps waits for this lock).
    await blocker.execute("LOCK TABLE saga_steps IN SHARE MODE")
    pruning = asyncio.create_task(first.delete_finished_before(cutoff, 5))

    async def first_is_deleting() -> bool:
        sql = (
            "SELECT count(*) FROM pg_locks WHERE relation = 'saga_steps'::regclass AND NOT granted"
        )
        return bool(await pg.conn.fetchval(sql))

    try:
        await eventually(first_is_deleting, "the first prune waits inside its delete")
        concurrent = await asyncio.wait_for(second.delete_finished_before(cutoff, 5), timeout=3)
    finally:
        await blocking.rollback()

    assert concurrent == 0
    assert await pruning == 5
    assert await second.delete_finished_before(cutoff, 5) == 5
    assert await remaining(pg) == set()
    assert len(doomed) == 10
