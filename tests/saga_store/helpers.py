"""Helpers of the saga-store suite: a fake clock, a database target, a saga factory, and
batches of one change (``saga_change``, ``step_change``, ``attempt_row``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import uuid
from collections.abc import Coroutine, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from saga_runner.records import CreateResult, NewStep, SagaStep
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import AttemptRecord, SagaStore, StepChange, WriteBatch

T = TypeVar("T")

TABLES = (
    "saga_callback_tokens",
    "saga_events",
    "saga_step_attempts",
    "saga_steps",
    "saga_instances",
    "saga_definitions",
)


@dataclass
class FakeClock:
    """A clock tests move by hand; callable like the store's default clock."""

    now: datetime = field(default_factory=lambda: datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move time forward and return the new now."""
        self.now += timedelta(seconds=seconds)
        return self.now


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in its own loop in a worker thread (for sync fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def new_schema() -> str:
    """A schema name nobody else uses."""
    return f"saga_test_{uuid.uuid4().hex[:10]}"


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``schema=`` added to its query."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class Target:
    """One test database: how to open stores on it and how to inspect it behind their back."""

    backend: str
    url: str
    base_dir: Path
    raw_url: str = ""
    schema: str = ""

    @classmethod
    def sqlite(cls, path: Path) -> Target:
        """A SQLite file."""
        return cls("sqlite", f"sqlite:///{path}", path.parent, raw_url=str(path))

    @classmethod
    def postgres(cls, database_url: str, schema: str) -> Target:
        """A schema of the test PostgreSQL database."""
        url = with_schema(database_url, schema)
        return cls("postgres", url, Path.cwd(), raw_url=database_url, schema=schema)

    async def open(self, clock: Any = None) -> SagaStore:
        """A new store (its own connections) on this database."""
        return await SagaStore.from_url(self.url, self.base_dir, clock=clock)

    async def migrate(self) -> list[int]:
        """Migrate with a short-lived store."""
        store = await self.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    async def _pg(self) -> Any:
        return await asyncpg.connect(self.raw_url, server_settings={"search_path": self.schema})

    async def drop(self) -> None:
        """Drop the PostgreSQL schema (SQLite files go with ``tmp_path``)."""
        conn = await self._pg()
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    async def truncate(self) -> None:
        """Empty every table of the PostgreSQL schema and restart its id sequences."""
        conn = await self._pg()
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    async def count(self, table: str, where: str = "TRUE") -> int:
        """Rows of ``table`` matching ``where``, read directly (not through the store)."""
        if table not in (*TABLES, "schema_migrations"):
            raise ValueError(table)
        sql = f"SELECT count(*) FROM {table} WHERE {where}"
        if self.backend == "sqlite":
            with closing(sqlite3.connect(self.raw_url)) as conn:
                return int(conn.execute(sql).fetchone()[0])
        conn = await self._pg()
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()


async def start_saga(
    store: SagaStore,
    definition: str,
    *,
    owner: str = "replica-a",
    steps: int | Sequence[NewStep] = 2,
    lease_seconds: float = 30.0,
    **overrides: Any,
) -> CreateResult:
    """Create a ``payment`` saga with ``steps`` (a number of pending steps, or the steps),
    claimed by ``owner``."""
    arguments: dict[str, Any] = {
        "business_type": "payment",
        "business_id": f"order-{uuid.uuid4().hex[:6]}",
        "definition_hash": definition,
        "mode": "sync",
        "input_data": {"order_no": "A-1", "amount": 12.5, "items": [1, 2]},
        "steps": (
            [NewStep(f"step_{n}", max_retry_count=3) for n in range(steps)]
            if isinstance(steps, int)
            else list(steps)
        ),
        "owner": owner,
        "lease_seconds": lease_seconds,
    }
    arguments.update(overrides)
    return await store.create_instance(**arguments)


def saga_change(status: SagaStatus | None = None, **columns: Any) -> WriteBatch:
    """A batch of one: the saga's new status (``None``: keep it) and other instance columns."""
    return WriteBatch(saga_status=status, saga_columns=columns)


def step_change(step_order: int, status: StepStatus, **columns: Any) -> WriteBatch:
    """A batch of one: step ``step_order`` moves to ``status`` and sets ``columns``."""
    return WriteBatch(steps=(StepChange(step_order, status, columns),))


def attempt_row(
    step_order: int,
    kind: AttemptKind,
    attempt: int,
    *,
    started_at: datetime,
    duration_ms: float,
    status_code: int | None = None,
    error: str | None = None,
) -> WriteBatch:
    """A batch of one: an attempt row for step ``step_order``."""
    record = AttemptRecord(
        step_order, kind, attempt, started_at, duration_ms, status_code=status_code, error=error
    )
    return WriteBatch(attempts=(record,))


async def step_of(store: SagaStore, saga_id: str, step_order: int) -> SagaStep:
    """Step ``step_order`` of the saga as stored."""
    return (await store.get(saga_id)).steps[step_order]
