"""Saga shapes in the records: each step's ``stage`` and a TCC step's ``phase``, on both stores,
and the migration that adds them to a database holding sagas of the release before."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saga_runner.errors import IllegalTransition
from saga_runner.records import NewStep
from saga_runner.states import AttemptKind, StepStatus
from saga_runner.store import SagaStore, StepChange, WriteBatch
from saga_runner.store.batch import AttemptRecord
from saga_runner.store.migrations import load_migrations
from saga_store.helpers import Target, start_saga, step_of

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_steps_keep_their_stage_and_phase(store: SagaStore, definition: str) -> None:
    steps = [
        NewStep("debit", 3, stage=0, phase=AttemptKind.TRY),
        NewStep("credit", 3, stage=1, phase=AttemptKind.TRY),
        NewStep("fee", 3, stage=1, phase=AttemptKind.TRY),
    ]
    created = await start_saga(store, definition, steps=steps)
    assert [(s.stage, s.phase) for s in created.steps] == [
        (0, AttemptKind.TRY),
        (1, AttemptKind.TRY),
        (1, AttemptKind.TRY),
    ]
    assert created.lease is not None
    saga_id = created.saga.id
    tried = WriteBatch(
        steps=(StepChange(1, StepStatus.RUNNING, {"retry_count": 1}, AttemptKind.TRY),)
    )
    await store.write(created.lease, tried)
    done = StepChange(1, StepStatus.SUCCEEDED, {}, AttemptKind.TRY)
    tried_ok = WriteBatch(
        steps=(done,), attempts=(AttemptRecord(1, AttemptKind.TRY, 1, NOW, 1.0, 201),)
    )
    await store.write(created.lease, tried_ok)
    confirming = StepChange(1, StepStatus.RUNNING, {}, AttemptKind.CONFIRM)
    attempt = AttemptRecord(1, AttemptKind.CONFIRM, 1, NOW, 2.0, 200)
    await store.write(created.lease, WriteBatch(steps=(confirming,), attempts=(attempt,)))

    detail = await store.get(saga_id)
    credit = detail.steps[1]
    assert (credit.stage, credit.phase, credit.status) == (
        1,
        AttemptKind.CONFIRM,
        StepStatus.RUNNING,
    )
    assert [a.kind for a in detail.attempts] == [AttemptKind.TRY, AttemptKind.CONFIRM]
    assert (await step_of(store, saga_id, 0)).phase is AttemptKind.TRY


async def test_a_plain_step_never_goes_from_succeeded_back_to_running(
    store: SagaStore, definition: str
) -> None:
    created = await start_saga(store, definition, steps=1)
    assert created.lease is not None
    lease = created.lease
    await store.write(lease, WriteBatch(steps=(StepChange(0, StepStatus.RUNNING),)))
    await store.write(lease, WriteBatch(steps=(StepChange(0, StepStatus.SUCCEEDED),)))

    with pytest.raises(IllegalTransition):
        await store.write(lease, WriteBatch(steps=(StepChange(0, StepStatus.RUNNING),)))
    confirm = StepChange(0, StepStatus.RUNNING, {}, AttemptKind.CONFIRM)
    await store.write(lease, WriteBatch(steps=(confirm,)))
    assert (await step_of(store, created.saga.id, 0)).status is StepStatus.RUNNING


async def test_the_shapes_migration_keeps_every_step_and_attempt(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with closing(sqlite3.connect(path)) as conn:
        for migration in load_migrations("sqlite")[:2]:
            conn.executescript(migration.sql)
        conn.executescript(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT 'then');"
            "INSERT INTO schema_migrations (version, name) VALUES (1, 'initial'),"
            " (2, 'step_key_generation');"
            "INSERT INTO saga_definitions VALUES ('h', 'order', '{}', '2026-01-01T00:00:00+00:00');"
            "INSERT INTO saga_instances (id, business_type, status, definition_hash, mode,"
            " created_at, updated_at) VALUES ('s1', 'order', 'failed', 'h', 'sync',"
            " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00');"
            "INSERT INTO saga_steps (saga_id, step_order, step_name, status, created_at,"
            " updated_at) VALUES ('s1', 0, 'reserve', 'succeeded',"
            " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00'),"
            " ('s1', 1, 'charge', 'compensation_failed',"
            " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00');"
            "INSERT INTO saga_step_attempts (id, saga_id, step_order, kind, attempt, started_at,"
            " duration_ms, status_code) VALUES (7, 's1', 1, 'compensation', 1,"
            " '2026-01-01T00:00:00+00:00', 3.5, 500);"
        )
        conn.commit()
    store = await Target.sqlite(path).open()
    try:
        assert await store.migrate() == [3, 4, 5, 6]
        detail = await store.get("s1")
        assert [(s.stage, s.phase) for s in detail.steps] == [(0, None), (1, None)]
        assert [(a.id, a.kind, a.status_code) for a in detail.attempts] == [
            (7, AttemptKind.COMPENSATION, 500)
        ]
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(
            "INSERT INTO saga_step_attempts (saga_id, step_order, kind, attempt, started_at,"
            " duration_ms) VALUES ('s1', 0, 'confirm', 1, '2026-01-01T00:00:00+00:00', 1),"
            " ('s1', 1, 'poll', 1, '2026-01-01T00:00:00+00:00', 1)"
        )
        assert conn.execute("SELECT max(id) FROM saga_step_attempts").fetchone() == (9,)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(saga_step_attempts)")}
        assert "saga_step_attempts_step" in indexes
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO saga_step_attempts (saga_id, step_order, kind, attempt,"
                " started_at, duration_ms) VALUES ('s1', 5, 'try', 1, 'x', 1)"
            )
