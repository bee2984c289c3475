"""Migrations: idempotent, safe when several replicas start at once, helpful when missing."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from saga_runner.errors import StoreError
from saga_runner.store import SagaStore
from saga_runner.store.migrations import load_migrations, split_sqlite_script
from saga_store.helpers import FakeClock, Target, step_of


async def test_migrate_twice_applies_nothing_the_second_time(fresh_target: Target) -> None:
    store = await fresh_target.open()
    try:
        first = await store.migrate()
        second = await store.migrate()
    finally:
        await store.close()
    assert first == [m.version for m in load_migrations("sqlite")]
    assert second == []
    assert await fresh_target.count("schema_migrations") == len(first)


async def test_concurrent_migrations_from_many_connections_apply_each_version_once(
    fresh_target: Target,
) -> None:
    stores = [await fresh_target.open() for _ in range(6)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for store in stores:
            await store.close()
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in load_migrations("postgres")]
    assert await fresh_target.count("schema_migrations") == len(applied)
    assert await fresh_target.count("saga_instances") == 0


async def test_using_an_unmigrated_database_says_to_run_migrate(
    fresh_target: Target, clock: FakeClock
) -> None:
    store: SagaStore = await fresh_target.open(clock)
    try:
        with pytest.raises(StoreError, match="run migrate"):
            await store.counts_by_status()
    finally:
        await store.close()


def test_both_dialects_ship_the_same_versions() -> None:
    postgres = [(m.version, m.name) for m in load_migrations("postgres")]
    assert postgres == [(m.version, m.name) for m in load_migrations("sqlite")]
    assert postgres[0] == (1, "initial")


def test_sqlite_scripts_split_into_complete_statements_ignoring_comments() -> None:
    script = (
        "-- a; comment\nCREATE TABLE a (x TEXT DEFAULT ';');\n\nCREATE INDEX i ON a (x);\n-- end\n"
    )
    assert split_sqlite_script(script) == [
        "-- a; comment\nCREATE TABLE a (x TEXT DEFAULT ';');",
        "CREATE INDEX i ON a (x);",
    ]


def test_an_unterminated_sqlite_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        split_sqlite_script("CREATE TABLE a (x TEXT);\nCREATE TABLE b (y TEXT)\n")


async def test_the_key_generation_migration_gives_existing_steps_generation_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    first = load_migrations("sqlite")[0]
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(first.sql)
        conn.executescript(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT 'then');"
            f"INSERT INTO schema_migrations (version, name) VALUES (1, '{first.name}');"
            "INSERT INTO saga_definitions VALUES ('h', 'order', '{}', '2026-01-01T00:00:00+00:00');"
            "INSERT INTO saga_instances (id, business_type, status, definition_hash, mode,"
            " created_at, updated_at) VALUES ('s1', 'order', 'failed', 'h', 'sync',"
            " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00');"
            "INSERT INTO saga_steps (saga_id, step_order, step_name, status, created_at,"
            " updated_at) VALUES ('s1', 0, 'charge', 'compensation_failed',"
            " '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00');"
        )
        conn.commit()
    target = Target.sqlite(path)
    store = await target.open()
    try:
        assert await store.migrate() == [m.version for m in load_migrations("sqlite")[1:]]
        assert (await step_of(store, "s1", 0)).key_generation == 1
        # Migration 3: a saga started before it has no recorded scope (readable by id alone).
        assert (await store.get_instance("s1")).client_scope is None
    finally:
        await store.close()
