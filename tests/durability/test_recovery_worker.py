"""A replica that re-claims a saga it is still running (its own lease expired) stops the old run.

When a process's renewals are starved past the lease, its own recovery loop may claim the saga
again. The claim fences the old run off; the worker must cancel that run before resuming, so one
process never drives a saga twice at once, and must keep tracking the new run (so shutdown waits
for it and its concurrency limit stays true).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from durability.conftest import Db, eventually, saga, step
from durability.ledger import Ledger
from saga_runner.catalog import load_definitions
from saga_runner.recovery import RecoverySettings, RecoveryWorker
from saga_runner.runtime import RuntimeSettings, SagaRuntime

LONG_LEASE = 30.0  # no renewal happens during the test: the lease only expires when we say so


@pytest.fixture
async def worker(
    pg: Db, tmp_path: Path, ledger_upstream: tuple[Ledger, str]
) -> AsyncIterator[RecoveryWorker]:
    """A recovery worker in this process over the test schema; its ``tick`` is called by hand."""
    services = {"ledger": ledger_upstream[1]}
    (tmp_path / "sagas").mkdir()
    doc = saga("twice", [step("hang", "/hang"), step("next", "/next")])
    (tmp_path / "sagas" / "twice.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    catalog = load_definitions(tmp_path, ["sagas/*.yaml"], services)
    settings = RuntimeSettings(pg.url, tmp_path, False, LONG_LEASE, 10.0, services)
    runtime = await SagaRuntime.open(settings, catalog)
    worker = RecoveryWorker(runtime, RecoverySettings(60.0, LONG_LEASE, 86400.0))
    yield worker
    await worker.stop(grace=1.0)
    await runtime.close()


async def test_worker_reclaiming_its_own_running_saga_cancels_the_stale_run(
    worker: RecoveryWorker, ledger: Ledger, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    gate = ledger.script("/hang", gate=threading.Event()).gate
    assert gate is not None
    definition = worker.runtime.catalog.by_name["twice"]
    created = await worker.runtime.engine.start(definition, {"order": "W-1"}, {})
    saga_id = created.saga.id
    assert created.lease is not None
    await worker.runtime.store.release(created.lease)

    assert await worker.tick() == [saga_id]
    await eventually(lambda: ledger.calls_to("/hang", saga_id), "the first run calls /hang")
    await pg.conn.execute("UPDATE saga_instances SET lease_expires_at = now() - interval '1s'")
    assert await worker.tick() == [saga_id]
    await eventually(lambda: len(ledger.calls_to("/hang", saga_id)) == 2, "the second run")

    assert worker.active == {saga_id}, "the new run is still tracked"
    with caplog.at_level(logging.INFO, logger="saga_sidecar"):
        gate.set()
        row = await pg.wait_status(saga_id)
    assert row["status"] == "completed"
    assert len(ledger.calls_to("/next", saga_id)) == 1
    assert not [r for r in caplog.records if getattr(r, "event", None) == "lease_lost"]
    await eventually(lambda: not worker.active, "the worker forgets the finished run")
