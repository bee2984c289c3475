"""The SQLite saga-store backend (embedded default): one writer connection, one reader, WAL mode.

Every write runs in ``BEGIN IMMEDIATE``, which takes the database write lock up front: writes
from this process are serialised by an ``asyncio.Lock`` on the writer connection, and writes
from other processes sharing the file (``workers > 1``) wait on ``busy_timeout``. Taking the lock
first also means a read-then-write never fails half-way with ``SQLITE_BUSY_SNAPSHOT``.
Rows are encoded and decoded by ``sqlite_rows``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiosqlite

from saga_runner.errors import StoreError
from saga_runner.records import Lease, PageCursor
from saga_runner.store import migrations, sqltext
from saga_runner.store.backend import ListFilter, Row, StepUpdate, StoreBackend
from saga_runner.store.sqlite_awaits import SqliteAwaits
from saga_runner.store.sqlite_rows import (
    all_rows,
    db_now,
    encode,
    encode_all,
    lease_expiry,
    numbered,
    one,
    param,
    timestamp,
)

_ACTIVE: Final = "status IN ('running', 'compensating')"
_FENCE: Final = "id = ?1 AND lease_version = ?2 AND owner = ?3"
_BUSY_TIMEOUT_MS: Final = 10_000
_MIN_SQLITE: Final = (3, 35, 0)  # RETURNING
# Leases per renewal statement: 3 parameters each, under SQLite's historic limit of 999.
_RENEW_BATCH: Final = 300


class _Refused(Exception):
    """A precondition of ``apply`` failed: roll the whole batch back."""


async def _open(path: str, *, read_only: bool) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            await conn.execute("PRAGMA query_only = ON")
        else:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        await conn.close()
        raise
    return conn


class SqliteBackend(SqliteAwaits, StoreBackend):
    """The saga tables in one SQLite file (embedded default; one host)."""

    name = "sqlite"
    driver_errors = (sqlite3.Error,)

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection | None,
    ) -> None:
        self._writer = writer
        self._reader = reader or writer
        self._write_lock = asyncio.Lock()
        self._read_lock = self._write_lock if reader is None else asyncio.Lock()

    @classmethod
    async def connect(cls, path: Path | str) -> SqliteBackend:
        """Open (creating if needed) the database file; ``":memory:"`` for a private one.

        Args:
            path: the database file; its directory is created when missing.

        Raises:
            StoreError: the file cannot be opened.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"the SQLite saga store needs SQLite >= 3.35 (RETURNING); this Python links "
                f"SQLite {sqlite3.sqlite_version}"
            )
        memory = str(path) == ":memory:"
        writer: aiosqlite.Connection | None = None
        try:
            if not memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            writer = await _open(str(path), read_only=False)
            reader = None if memory else await _open(str(path), read_only=True)
        except (sqlite3.Error, OSError) as exc:
            if writer is not None:
                await writer.close()
            raise StoreError(f"cannot open SQLite saga store {str(path)!r}: {exc}") from exc
        return cls(writer, reader)

    def describe(self, exc: BaseException) -> str:
        text = super().describe(exc)
        if text.startswith("no such table"):
            return f"{text}: the saga tables are missing; run migrate"
        return text

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                # Unconditional: statements run in order on aiosqlite's thread, so this also
                # ends a BEGIN whose await was cancelled after it had been queued.
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise

    async def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        async with self._read_lock:
            return await one(self._reader, sql, args)

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._read_lock:
            return await all_rows(self._reader, sql, args)

    async def migrate(self) -> list[int]:
        async with self._write() as conn:
            return await migrations.migrate_sqlite(conn)

    async def ping(self) -> None:
        await self._fetchone("SELECT 1 AS ok")

    async def close(self) -> None:
        if self._reader is not self._writer:
            await self._reader.close()
        await self._writer.close()

    async def insert_definition(self, row: Row) -> None:
        sql = sqltext.insert("saga_definitions", list(row), param)
        async with self._write() as conn:
            await conn.execute(f"{sql} ON CONFLICT (hash) DO NOTHING", encode_all(row))

    async def select_definition(self, definition_hash: str) -> Row | None:
        return await self._fetchone(
            "SELECT * FROM saga_definitions WHERE hash = ?1", [definition_hash]
        )

    async def insert_instance(
        self, instance: Row, steps: list[Row], event: Row | None, lease_seconds: float
    ) -> tuple[Row, list[int]] | None:
        seconds = param(len(instance) + 1)
        expiry = {"lease_expires_at": lambda placeholder: lease_expiry(placeholder, seconds)}
        sql = sqltext.insert("saga_instances", list(instance), param, expiry)
        sql += " ON CONFLICT (business_type, idempotency_key) DO NOTHING RETURNING *"
        ids: dict[int, int] = {}
        async with self._write() as conn:
            created = await one(conn, sql, [*encode_all(instance), float(lease_seconds)])
            if created is None:
                return None
            if steps:
                width = len(steps[0])
                step_sql = (
                    f"INSERT INTO saga_steps ({', '.join(steps[0])}) "
                    f"VALUES {sqltext.row_values(len(steps), width, param, 1)} "
                    "RETURNING id, step_order"
                )
                values = [v for step in steps for v in encode_all(step)]
                written = await all_rows(conn, step_sql, values)
                ids = {r["step_order"]: r["id"] for r in written}
            if event is not None:
                event_sql = sqltext.insert("saga_events", list(event), param)
                await conn.execute(event_sql, encode_all(event))
        return created, [ids[step["step_order"]] for step in steps]

    async def select_by_idempotency_key(self, business_type: str, key: str | None) -> Row | None:
        sql = "SELECT * FROM saga_instances WHERE business_type = ?1 AND idempotency_key = ?2"
        return await self._fetchone(sql, [business_type, key])

    async def apply(
        self,
        lease: Lease,
        sources: frozenset[str] | None,
        changes: Row,
        steps: Sequence[StepUpdate],
        attempts: Sequence[Row],
    ) -> Row | None:
        args: list[Any] = [lease.saga_id, lease.version, lease.owner]
        status_clause = ""
        if sources is not None:
            status_clause = f" AND status IN ({numbered(4, len(sources))})"
            args += sorted(sources)
        assignments = sqltext.assignments(changes, param, len(args) + 1)
        sql = f"UPDATE saga_instances SET {assignments} WHERE {_FENCE}{status_clause} RETURNING *"
        try:
            async with self._write() as conn:
                saga = await one(conn, sql, args + encode_all(changes))
                if saga is None:
                    return None
                for step in steps:
                    await self._apply_step(conn, lease.saga_id, step)
                for row in attempts:
                    await self._apply_attempt(conn, row)
        except _Refused:
            return None
        return saga

    @staticmethod
    async def _apply_step(conn: aiosqlite.Connection, saga_id: str, step: StepUpdate) -> None:
        args: list[Any] = [saga_id, step.step_order, *sorted(step.sources)]
        assignments = sqltext.assignments(step.changes, param, len(args) + 1)
        sql = (
            f"UPDATE saga_steps SET {assignments} WHERE saga_id = ?1 AND step_order = ?2 "
            f"AND status IN ({numbered(3, len(step.sources))}) RETURNING id"
        )
        if await one(conn, sql, args + encode_all(step.changes)) is None:
            raise _Refused

    @staticmethod
    async def _apply_attempt(conn: aiosqlite.Connection, row: Row) -> None:
        # ``row`` starts with saga_id and step_order (``policy.attempt_row``): ?1 and ?2.
        columns = ", ".join(row)
        sql = f"""
            INSERT INTO saga_step_attempts ({columns})
            SELECT {numbered(1, len(row))}
            WHERE EXISTS (SELECT 1 FROM saga_steps WHERE saga_id = ?1 AND step_order = ?2)
            RETURNING id"""
        if await one(conn, sql, encode_all(row)) is None:
            raise _Refused

    async def select_instance(self, saga_id: str) -> Row | None:
        return await self._fetchone("SELECT * FROM saga_instances WHERE id = ?1", [saga_id])

    async def select_step(self, saga_id: str, step_order: int) -> Row | None:
        sql = "SELECT * FROM saga_steps WHERE saga_id = ?1 AND step_order = ?2"
        return await self._fetchone(sql, [saga_id, step_order])

    async def _changed_one(self, sql: str, args: Sequence[Any]) -> bool:
        async with self._write() as conn, conn.execute(sql, args) as cursor:
            return cursor.rowcount == 1

    async def renew(self, lease: Lease, expires: datetime | None, seconds: float) -> bool:
        expiry = lease_expiry("?4", "?5")
        sql = f"UPDATE saga_instances SET lease_expires_at = {expiry} WHERE {_FENCE}"
        return await self._changed_one(
            sql, [lease.saga_id, lease.version, lease.owner, _text(expires), float(seconds)]
        )

    async def renew_many(
        self, leases: Sequence[Lease], expires: datetime | None, seconds: float
    ) -> set[Lease]:
        renewed: set[Lease] = set()
        async with self._write() as conn:
            for start in range(0, len(leases), _RENEW_BATCH):
                batch = leases[start : start + _RENEW_BATCH]
                # UPDATE ... FROM, so each lease is found through the primary key (a row-value
                # IN would scan the whole table).
                sql = f"""
                    UPDATE saga_instances AS s SET lease_expires_at = {lease_expiry("?1", "?2")}
                    FROM (VALUES {sqltext.row_values(len(batch), 3, param, 3)}) AS held
                    WHERE s.id = held.column1 AND s.owner = held.column2
                      AND s.lease_version = held.column3
                    RETURNING id, owner, lease_version"""
                args: list[Any] = [_text(expires), float(seconds)]
                args += [v for lease in batch for v in (lease.saga_id, lease.owner, lease.version)]
                rows = await all_rows(conn, sql, args)
                renewed.update(Lease(r["id"], r["owner"], r["lease_version"]) for r in rows)
        return renewed

    async def release(self, lease: Lease, next_run_at: datetime | None) -> bool:
        sql = (
            "UPDATE saga_instances SET owner = NULL, lease_expires_at = NULL, "
            f"next_run_at = COALESCE(?4, next_run_at) WHERE {_FENCE}"
        )
        due = None if next_run_at is None else timestamp(next_run_at)
        return await self._changed_one(sql, [lease.saga_id, lease.version, lease.owner, due])

    async def claim_due(
        self, owner: str, now: datetime | None, expires: datetime | None, seconds: float, limit: int
    ) -> list[Row]:
        sql = f"""
            UPDATE saga_instances
            SET owner = ?2, lease_expires_at = {lease_expiry("?3", "?5")},
                lease_version = lease_version + 1, next_run_at = NULL
            WHERE id IN (
                SELECT id FROM saga_instances
                WHERE {_ACTIVE}
                  AND (lease_expires_at IS NULL OR lease_expires_at <= {db_now("?1")})
                  AND (next_run_at IS NULL OR next_run_at <= {db_now("?1")})
                ORDER BY created_at
                LIMIT ?4
            )
            RETURNING *"""
        args = [_text(now), owner, _text(expires), limit, float(seconds)]
        async with self._write() as conn:
            return await all_rows(conn, sql, args)

    async def next_run(self) -> datetime | None:
        return sqltext.earliest_run(await self._fetchall(sqltext.NEXT_RUNS))

    async def claim_one(
        self,
        saga_id: str,
        owner: str,
        now: datetime | None,
        expires: datetime | None,
        seconds: float,
        force: bool,
    ) -> Row | None:
        sql = f"""
            UPDATE saga_instances
            SET owner = ?2, lease_expires_at = {lease_expiry("?3", "?6")},
                lease_version = lease_version + 1, next_run_at = NULL
            WHERE id = ?1 AND (?5 OR lease_expires_at IS NULL
                               OR lease_expires_at <= {db_now("?4")})
            RETURNING *"""
        args = [saga_id, owner, _text(expires), _text(now), int(force), float(seconds)]
        async with self._write() as conn:
            return await one(conn, sql, args)

    async def select_detail(
        self, saga_id: str
    ) -> tuple[Row, list[Row], list[Row], list[Row]] | None:
        queries = (
            "SELECT * FROM saga_steps WHERE saga_id = ?1 ORDER BY step_order",
            "SELECT * FROM saga_step_attempts WHERE saga_id = ?1 ORDER BY id",
            "SELECT * FROM saga_events WHERE saga_id = ?1 ORDER BY at, id",
        )
        async with self._read_lock:
            conn = self._reader
            # One read transaction: the four reads see the same snapshot.
            await conn.execute("BEGIN")
            try:
                instance = await one(conn, "SELECT * FROM saga_instances WHERE id = ?1", [saga_id])
                children = [await all_rows(conn, sql, [saga_id]) for sql in queries]
            finally:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("COMMIT")
        if instance is None:
            return None
        steps, attempts, events = children
        return instance, steps, attempts, events

    async def select_page(
        self, where: ListFilter, limit: int, before: PageCursor | None
    ) -> list[Row]:
        sql, args = sqltext.page(where, limit, before, param)
        return await self._fetchall(sql, [encode("", a) for a in args])

    async def count_by_status(self) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT status, count(*) AS n FROM saga_instances GROUP BY status"
        )
        return {r["status"]: r["n"] for r in rows}

    async def count_in(self, statuses: frozenset[str]) -> int:
        marks = numbered(1, len(statuses))
        sql = f"SELECT count(*) AS n FROM saga_instances WHERE status IN ({marks})"
        row = await self._fetchone(sql, sorted(statuses))
        return int(row["n"]) if row else 0

    async def oldest_in(self, statuses: frozenset[str]) -> datetime | None:
        sql = (
            "SELECT min(created_at) AS created_at FROM saga_instances "
            f"WHERE status IN ({numbered(1, len(statuses))})"
        )
        row = await self._fetchone(sql, sorted(statuses))
        return None if row is None else row["created_at"]

    async def insert_event(self, row: Row) -> Row | None:
        sql = """
            INSERT INTO saga_events (saga_id, at, actor, action, detail)
            SELECT ?1, ?2, ?3, ?4, ?5
            WHERE EXISTS (SELECT 1 FROM saga_instances WHERE id = ?1)
            RETURNING *"""
        async with self._write() as conn:
            return await one(conn, sql, encode_all(row))

    async def delete_finished(self, cutoff: datetime, limit: int) -> int:
        sql = """
            DELETE FROM saga_instances WHERE id IN (
                SELECT id FROM saga_instances
                WHERE status IN ('completed', 'compensated')
                  AND COALESCE(completed_at, compensated_at) < ?1
                ORDER BY COALESCE(completed_at, compensated_at)
                LIMIT ?2
            )"""
        async with self._write() as conn, conn.execute(sql, [timestamp(cutoff), limit]) as cursor:
            return cursor.rowcount


def _text(value: datetime | None) -> str | None:
    return None if value is None else timestamp(value)
