"""How the SQLite saga store encodes and decodes rows, and runs a statement in one trip.

Timestamps are fixed-width ISO-8601 UTC text (they compare correctly as text); JSON columns hold
JSON text. ``decode`` turns a row back into the Python types the PostgreSQL store returns.
``one`` and ``all_rows`` run a statement with ``execute_fetchall``: one trip to aiosqlite's
thread, where a cursor's ``execute``, ``fetchone`` and ``close`` would be three.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aiosqlite

from saga_runner.store.backend import Row

JSON_COLUMNS: Final = frozenset(
    {
        "input",
        "response",
        "execute_data",
        "compensate_data",
        "result",
        "detail",
        "body",
        "await_result",
    }
)
TIME_COLUMNS: Final = frozenset(
    {
        "created_at",
        "updated_at",
        "completed_at",
        "compensated_at",
        "lease_expires_at",
        "next_run_at",
        "next_retry_at",
        "started_at",
        "at",
        "waiting_since",
        "wait_until",
        "deadline_at",
    }
)


def param(n: int) -> str:
    """The n-th (1-based) parameter: ``?n``."""
    return f"?{n}"


def numbered(first: int, count: int) -> str:
    """``?first, ?first+1, ...``: ``count`` parameters."""
    return ", ".join(param(n) for n in range(first, first + count))


def db_now(now: str) -> str:
    """SQL for "now" in lease comparisons: the given timestamp text if not NULL (an injected
    test clock), else the database's clock, in the stored format (``timestamp``)."""
    return f"COALESCE({now}, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000+00:00')"


def lease_expiry(expires: str, seconds: str) -> str:
    """SQL for a lease's expiry: the given timestamp text if not NULL, else ``seconds`` from
    now by the database's clock, in the stored format."""
    later = f"strftime('%Y-%m-%dT%H:%M:%f', 'now', printf('%+.6f seconds', {seconds}))"
    return f"COALESCE({expires}, {later} || '000+00:00')"


def timestamp(value: datetime) -> str:
    """``value`` as stored: ISO-8601 UTC text with microseconds."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def encode(column: str, value: Any) -> Any:
    """``value`` of ``column`` as stored (JSON text, timestamp text, or as is)."""
    if value is None:
        return None
    if column in JSON_COLUMNS:
        return json.dumps(value)
    if isinstance(value, datetime):
        return timestamp(value)
    return value


def encode_all(row: Row) -> list[Any]:
    """The values of ``row`` as stored, in its column order."""
    return [encode(column, value) for column, value in row.items()]


def decode(row: sqlite3.Row | None) -> Row | None:
    """A stored row as the Python types the stores return (``None`` stays ``None``)."""
    if row is None:
        return None
    decoded: Row = {}
    for column, value in zip(row.keys(), row, strict=True):
        if value is not None and column in JSON_COLUMNS:
            value = json.loads(value)
        elif value is not None and column in TIME_COLUMNS:
            value = datetime.fromisoformat(value).astimezone(UTC)
        decoded[column] = value
    return decoded


def decode_all(rows: Iterable[sqlite3.Row]) -> list[Row]:
    """``decode`` of each row."""
    return [r for r in map(decode, rows) if r is not None]


async def one(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> Row | None:
    """The first row of ``sql``, decoded; one trip to the connection's thread (a cursor's
    ``execute``, ``fetchone`` and ``close`` would be three)."""
    rows = list(await conn.execute_fetchall(sql, args))
    return decode(rows[0]) if rows else None


async def all_rows(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> list[Row]:
    """Every row of ``sql``, decoded, in one trip to the connection's thread."""
    return decode_all(await conn.execute_fetchall(sql, args))
