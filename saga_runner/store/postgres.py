"""The PostgreSQL saga-store backend: one asyncpg pool per process, optionally in its own schema.

JSONB columns are (de)serialised by codecs registered in the pool's ``init``; the schema is set
as the ``search_path`` connection parameter (a startup setting, which needs no ``SET``), and a
connection returns to the pool without asyncpg's ``RESET ALL`` round trip (the store keeps no
session state). Fenced writes are
single statements whose ``WHERE`` carries the lease, or CTEs that lock the instance row
``FOR NO KEY UPDATE`` first, so a concurrent claim and a stale write are strictly ordered.
Claims use ``FOR UPDATE SKIP LOCKED``; retention runs under a per-schema transaction-scoped
advisory lock, so only one replica prunes at a time. Lease renewals use a connection of their
own, so they never wait for a pool connection behind the runs' writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from saga_runner.errors import StoreError
from saga_runner.records import Lease, PageCursor
from saga_runner.store import migrations, pg_batches, sqltext
from saga_runner.store.backend import ListFilter, Row, StepUpdate, StoreBackend
from saga_runner.store.pg_awaits import PostgresAwaits

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OPTIONS: Final = ("schema", "min_size", "max_size", "command_timeout")
_ACTIVE: Final = "status IN ('running', 'compensating')"
_FENCE: Final = pg_batches.FENCE
_PING_TIMEOUT: Final = 5.0


def _param(n: int) -> str:
    return f"${n}"


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The DSN for asyncpg and our own options (which asyncpg would send as server settings)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in _OPTIONS}
    rest = urlencode([(k, v) for k, v in query if k not in _OPTIONS])
    return urlunsplit(parts._replace(query=rest)), options


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _keep_session(conn: Any) -> None:
    """Return a connection to the pool without asyncpg's reset query (a round trip per use).

    The store leaves no session state behind: no ``SET`` (the schema is a startup parameter),
    no ``LISTEN``, no cursors outside a transaction, only transaction-scoped advisory locks;
    asyncpg still rolls back a transaction left open before calling this.
    """


async def _init_connection(conn: Any) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _create_pools(
    dsn: str, options: dict[str, str], schema: str, connect_timeout: float
) -> tuple[Any, Any]:
    """The store's pool, and the one-connection pool lease renewals use."""
    settings = {"search_path": schema, "application_name": "saga-sidecar"}
    common: dict[str, Any] = {
        "timeout": connect_timeout,
        "command_timeout": float(options.get("command_timeout", 60)),
        "init": _init_connection,
        "reset": _keep_session,
    }
    pool = await asyncpg.create_pool(
        dsn,
        min_size=int(options.get("min_size", 1)),
        max_size=int(options.get("max_size", 10)),
        server_settings=settings,
        **common,
    )
    try:
        lease_pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=1,
            server_settings={**settings, "application_name": "saga-sidecar-leases"},
            **common,
        )
    except BaseException:
        await pool.close()
        raise
    return pool, lease_pool


def _rows(records: Sequence[Any]) -> list[Row]:
    return [dict(r) for r in records]


def _row(record: Any) -> Row | None:
    return None if record is None else dict(record)


class PostgresBackend(PostgresAwaits, StoreBackend):
    """The saga tables on PostgreSQL (production; shared by every replica)."""

    name = "postgres"
    driver_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

    def __init__(self, pool: Any, schema: str, *, lease_pool: Any = None) -> None:
        self._pool = pool
        # Lease renewals get a connection of their own: queued behind the runs' writes for one
        # of ``pool``'s connections, a renewal on a busy process came after the lease expired.
        self._lease_pool = pool if lease_pool is None else lease_pool
        self.schema = schema

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 10.0,
    ) -> PostgresBackend:
        """Create the pools (connecting at once, so a bad URL fails at startup).

        Besides the pool of ``max_size`` connections, one more connection is kept for lease
        renewals (``renew_many``).

        Args:
            url: ``postgresql://user:pass@host:port/db``; query options ``schema`` (default
                ``public``), ``min_size`` (1), ``max_size`` (10) and ``command_timeout``
                (seconds a statement may take, 60) are ours; others go to asyncpg.
            schema: overrides ``?schema=``; a plain lower-case identifier.
            connect_timeout: seconds to wait for each connection attempt.

        Raises:
            StoreError: the schema name is invalid or the server cannot be reached.
        """
        dsn, options = _split_url(url)
        schema = schema or options.get("schema") or "public"
        if not _SCHEMA_RE.match(schema):
            raise StoreError(f"invalid schema name {schema!r}: use lower-case letters, digits, _")
        try:
            pool, lease_pool = await _create_pools(dsn, options, schema, connect_timeout)
        except (*cls.driver_errors, ValueError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {redact_url(url)}: {exc}") from exc
        return cls(pool, schema, lease_pool=lease_pool)

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, asyncpg.UndefinedTableError):
            return f"{exc}: the saga tables are missing in schema {self.schema!r}; run migrate"
        detail = getattr(exc, "detail", None)
        return f"{super().describe(exc)} ({detail})" if detail else super().describe(exc)

    async def migrate(self) -> list[int]:
        async with self._pool.acquire() as conn, conn.transaction():
            return await migrations.migrate_postgres(conn, self.schema)

    async def ping(self) -> None:
        # Bounded, so a readiness probe answers "not ready" instead of hanging.
        async with self._pool.acquire(timeout=_PING_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1", timeout=_PING_TIMEOUT)

    async def close(self) -> None:
        await self._pool.close()
        if self._lease_pool is not self._pool:
            await self._lease_pool.close()

    async def insert_definition(self, row: Row) -> None:
        sql = sqltext.insert("saga_definitions", list(row), _param)
        await self._pool.execute(f"{sql} ON CONFLICT (hash) DO NOTHING", *row.values())

    async def select_definition(self, definition_hash: str) -> Row | None:
        sql = "SELECT * FROM saga_definitions WHERE hash = $1"
        return _row(await self._pool.fetchrow(sql, definition_hash))

    async def insert_instance(
        self, instance: Row, steps: list[Row], event: Row | None, lease_seconds: float
    ) -> tuple[Row, list[int]] | None:
        sql = pg_batches.create_sql(tuple(instance))
        args = pg_batches.create_args(instance, steps, event, lease_seconds)
        created = await self._pool.fetchrow(sql, *args)
        if created is None:
            return None
        row = dict(created)
        return row, list(row.pop("step_ids"))

    async def select_by_idempotency_key(self, business_type: str, key: str | None) -> Row | None:
        sql = "SELECT * FROM saga_instances WHERE business_type = $1 AND idempotency_key = $2"
        return _row(await self._pool.fetchrow(sql, business_type, key))

    async def apply(
        self,
        lease: Lease,
        sources: frozenset[str] | None,
        changes: Row,
        steps: Sequence[StepUpdate],
        attempts: Sequence[Row],
    ) -> Row | None:
        sql = pg_batches.apply_sql(pg_batches.apply_shape(sources, changes, steps, attempts))
        args = pg_batches.apply_args(lease, sources, changes, steps, attempts)
        return _row(await self._pool.fetchrow(sql, *args))

    async def select_instance(self, saga_id: str) -> Row | None:
        return _row(
            await self._pool.fetchrow("SELECT * FROM saga_instances WHERE id = $1", saga_id)
        )

    async def select_step(self, saga_id: str, step_order: int) -> Row | None:
        sql = "SELECT * FROM saga_steps WHERE saga_id = $1 AND step_order = $2"
        return _row(await self._pool.fetchrow(sql, saga_id, step_order))

    async def renew(self, lease: Lease, expires: datetime | None, seconds: float) -> bool:
        expiry = pg_batches.lease_expiry("$4", "$5")
        sql = f"UPDATE saga_instances SET lease_expires_at = {expiry} WHERE {_FENCE}"
        args = (lease.saga_id, lease.version, lease.owner, expires, float(seconds))
        return bool(await self._pool.execute(sql, *args) == "UPDATE 1")

    async def renew_many(
        self, leases: Sequence[Lease], expires: datetime | None, seconds: float
    ) -> set[Lease]:
        # The rows are locked in id order first, so two replicas renewing overlapping batches
        # (one of them holding stale leases) wait for each other instead of deadlocking.
        sql = f"""
            WITH held AS (
                SELECT s.id FROM saga_instances AS s
                JOIN unnest($2::text[], $3::text[], $4::bigint[]) AS l(id, owner, version)
                  ON s.id = l.id AND s.owner = l.owner AND s.lease_version = l.version
                ORDER BY s.id
                FOR NO KEY UPDATE OF s
            )
            UPDATE saga_instances AS s SET lease_expires_at = {pg_batches.lease_expiry("$1", "$5")}
            FROM held WHERE s.id = held.id
            RETURNING s.id, s.owner, s.lease_version"""
        ids = [lease.saga_id for lease in leases]
        owners = [lease.owner for lease in leases]
        versions = [lease.version for lease in leases]
        rows = await self._lease_pool.fetch(sql, expires, ids, owners, versions, float(seconds))
        return {Lease(r["id"], r["owner"], r["lease_version"]) for r in rows}

    async def release(self, lease: Lease, next_run_at: datetime | None) -> bool:
        sql = (
            "UPDATE saga_instances SET owner = NULL, lease_expires_at = NULL, "
            f"next_run_at = COALESCE($4, next_run_at) WHERE {_FENCE}"
        )
        args = (lease.saga_id, lease.version, lease.owner, next_run_at)
        return bool(await self._pool.execute(sql, *args) == "UPDATE 1")

    async def claim_due(
        self, owner: str, now: datetime | None, expires: datetime | None, seconds: float, limit: int
    ) -> list[Row]:
        sql = f"""
            WITH due AS (
                SELECT id FROM saga_instances
                WHERE {_ACTIVE}
                  AND (lease_expires_at IS NULL OR lease_expires_at <= {pg_batches.db_now("$1")})
                  AND (next_run_at IS NULL OR next_run_at <= {pg_batches.db_now("$1")})
                ORDER BY created_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED
            )
            UPDATE saga_instances AS s
            SET owner = $2, lease_expires_at = {pg_batches.lease_expiry("$3", "$5")},
                lease_version = s.lease_version + 1, next_run_at = NULL
            FROM due WHERE s.id = due.id
            RETURNING s.*"""
        args = (now, owner, expires, limit, float(seconds))
        return _rows(await self._pool.fetch(sql, *args))

    async def next_run(self) -> datetime | None:
        return sqltext.earliest_run(await self._pool.fetch(sqltext.NEXT_RUNS))

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
            SET owner = $2, lease_expires_at = {pg_batches.lease_expiry("$3", "$6")},
                lease_version = lease_version + 1, next_run_at = NULL
            WHERE id = $1 AND ($5 OR lease_expires_at IS NULL
                               OR lease_expires_at <= {pg_batches.db_now("$4")})
            RETURNING *"""
        args = (saga_id, owner, expires, now, force, float(seconds))
        return _row(await self._pool.fetchrow(sql, *args))

    async def select_detail(
        self, saga_id: str
    ) -> tuple[Row, list[Row], list[Row], list[Row]] | None:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            instance = await conn.fetchrow("SELECT * FROM saga_instances WHERE id = $1", saga_id)
            if instance is None:
                return None
            steps = await conn.fetch(
                "SELECT * FROM saga_steps WHERE saga_id = $1 ORDER BY step_order", saga_id
            )
            attempts = await conn.fetch(
                "SELECT * FROM saga_step_attempts WHERE saga_id = $1 ORDER BY id", saga_id
            )
            events = await conn.fetch(
                "SELECT * FROM saga_events WHERE saga_id = $1 ORDER BY at, id", saga_id
            )
        return dict(instance), _rows(steps), _rows(attempts), _rows(events)

    async def select_page(
        self, where: ListFilter, limit: int, before: PageCursor | None
    ) -> list[Row]:
        sql, args = sqltext.page(where, limit, before, _param)
        return _rows(await self._pool.fetch(sql, *args))

    async def count_by_status(self) -> dict[str, int]:
        sql = "SELECT status, count(*) AS n FROM saga_instances GROUP BY status"
        return {r["status"]: r["n"] for r in await self._pool.fetch(sql)}

    async def count_in(self, statuses: frozenset[str]) -> int:
        sql = "SELECT count(*) FROM saga_instances WHERE status = ANY($1::text[])"
        return int(await self._pool.fetchval(sql, list(statuses)))

    async def oldest_in(self, statuses: frozenset[str]) -> datetime | None:
        sql = "SELECT min(created_at) FROM saga_instances WHERE status = ANY($1::text[])"
        oldest: datetime | None = await self._pool.fetchval(sql, list(statuses))
        return oldest

    async def insert_event(self, row: Row) -> Row | None:
        sql = """
            INSERT INTO saga_events (saga_id, at, actor, action, detail)
            SELECT $1, $2::timestamptz, $3, $4, $5::jsonb
            WHERE EXISTS (SELECT 1 FROM saga_instances WHERE id = $1)
            RETURNING *"""
        args = (row["saga_id"], row["at"], row["actor"], row["action"], row["detail"])
        return _row(await self._pool.fetchrow(sql, *args))

    async def delete_finished(self, cutoff: datetime, limit: int) -> int:
        # One replica prunes at a time: the others skip the tick instead of deleting alongside
        # it (and queueing on the same cascades). Transaction-scoped, so a crash releases it.
        lock = "SELECT pg_try_advisory_xact_lock(hashtext($1))"
        sql = """
            WITH doomed AS (
                SELECT id FROM saga_instances
                WHERE status IN ('completed', 'compensated')
                  AND COALESCE(completed_at, compensated_at) < $1
                ORDER BY COALESCE(completed_at, compensated_at)
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            DELETE FROM saga_instances WHERE id IN (SELECT id FROM doomed)"""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(lock, f"saga_runner:retention:{self.schema}"):
                return 0
            status: str = await conn.execute(sql, cutoff, limit)
        return int(status.rsplit(" ", 1)[-1])
