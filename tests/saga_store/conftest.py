"""Fixtures of the saga-store contract suite: every test runs against SQLite and PostgreSQL.

PostgreSQL: one schema per test session, named with a random suffix, migrated once, emptied
(``TRUNCATE ... RESTART IDENTITY``) before each test and dropped at the end. SQLite: a fresh
file under ``tmp_path`` per test. Stores use a ``FakeClock`` so lease expiry and backoff are
tested by moving time, not by sleeping.

Fixtures:
    backend      ``"sqlite"`` or ``"postgres"`` (parametrized).
    clock        a ``FakeClock`` shared by every store the test opens.
    target       a ``Target``: the database of this test (URL, raw row counts, fresh copies).
    store        a migrated ``SagaStore`` on ``target``, closed after the test.
    open_store   ``await open_store() -> SagaStore``: another store (own connections) on the
                 same database, for concurrency tests; closed after the test.
    definition   the hash of a saved definition, ready for ``create_instance``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from saga_runner.store import SagaStore
from saga_store.helpers import FakeClock, Target, new_schema


@pytest.fixture
def clock() -> FakeClock:
    """The time every store of the test sees; move it with ``advance``."""
    return FakeClock()


@pytest.fixture
async def target(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Target]:
    """This test's empty, migrated database."""
    if backend == "sqlite":
        target = Target.sqlite(tmp_path / "sagas.db")
        await target.migrate()
    else:
        target = request.getfixturevalue("pg_session_schema")
        await target.truncate()
    yield target


@pytest.fixture
async def open_store(
    target: Target, clock: FakeClock
) -> AsyncIterator[Callable[[], Awaitable[SagaStore]]]:
    """Open more stores on the test's database; all are closed after the test."""
    opened: list[SagaStore] = []

    async def factory() -> SagaStore:
        store = await target.open(clock)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[SagaStore]]) -> SagaStore:
    """A store on the test's database."""
    return await open_store()


@pytest.fixture
async def definition(store: SagaStore) -> str:
    """A saved definition's hash."""
    saved = await store.save_definition("def-v1", "payment", {"name": "payment", "steps": []})
    return saved.hash


@pytest.fixture
async def fresh_target(backend: str, tmp_path: Path, database_url: str) -> AsyncIterator[Target]:
    """An empty, unmigrated database (its own schema on PostgreSQL), removed after the test."""
    if backend == "sqlite":
        yield Target.sqlite(tmp_path / "fresh.db")
        return
    target = Target.postgres(database_url, new_schema())
    try:
        yield target
    finally:
        await target.drop()
