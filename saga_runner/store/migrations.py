"""Versioned schema migrations for both dialects, recorded in ``schema_migrations``.

Migrations are SQL files ``ddl/<dialect>/NNNN_name.sql`` numbered from 0001 without gaps; each
dialect has the same versions. ``migrate_postgres`` / ``migrate_sqlite`` apply the missing ones
inside the caller's transaction, so a migration and its ``schema_migrations`` row commit together.
Concurrent starts are serialised: PostgreSQL by a transaction-scoped advisory lock (per schema),
SQLite by the ``BEGIN IMMEDIATE`` write lock the caller holds. A database already migrated by a
newer release (versions this code does not know) is left alone.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import aiosqlite

Dialect = Literal["postgres", "sqlite"]

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_PG_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

_SQLITE_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its number, name and SQL script."""

    version: int
    name: str
    sql: str


@cache
def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The migrations shipped for ``dialect``, in version order.

    Args:
        dialect: ``postgres`` or ``sqlite``.

    Raises:
        RuntimeError: a file is misnamed or the versions are not 1, 2, 3, ... (a packaging bug).
    """
    found = []
    for entry in (resources.files("saga_runner.store") / "ddl" / dialect).iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise RuntimeError(f"unexpected file in {dialect} migrations: {entry.name}")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..{len(found)} without gaps")
    return tuple(found)


def split_sqlite_script(script: str) -> list[str]:
    """Split a script into complete statements (``executescript`` would commit; we must not)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [ln for ln in pending.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise ValueError(f"incomplete SQL statement at the end of a script: {pending.strip()!r}")
    return statements


async def migrate_postgres(conn: Any, schema: str) -> list[int]:
    """Apply missing PostgreSQL migrations to ``schema``; call inside a transaction.

    Args:
        conn: an asyncpg connection whose ``search_path`` is ``schema``, in a transaction.
        schema: the schema holding the tables (created if missing); must be a plain
            lower-case identifier.

    Returns:
        the versions applied.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"saga_runner:{schema}")
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(_PG_VERSIONS_TABLE)
    applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    done = []
    for migration in load_migrations("postgres"):
        if migration.version in applied:
            continue
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )
        done.append(migration.version)
    return done


async def migrate_sqlite(conn: aiosqlite.Connection) -> list[int]:
    """Apply missing SQLite migrations; call inside ``BEGIN IMMEDIATE``.

    Args:
        conn: the writer connection, holding the database's write lock.

    Returns:
        the versions applied.
    """
    await conn.execute(_SQLITE_VERSIONS_TABLE)
    async with conn.execute("SELECT version FROM schema_migrations") as cursor:
        applied = {row[0] for row in await cursor.fetchall()}
    done = []
    for migration in load_migrations("sqlite"):
        if migration.version in applied:
            continue
        for statement in split_sqlite_script(migration.sql):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
            (migration.version, migration.name),
        )
        done.append(migration.version)
    return done
