"""SagaStore.from_url: picking the backend from the URL, and clear errors when it cannot connect."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from saga_runner.errors import StoreError
from saga_runner.store import SagaStore
from saga_runner.store.migrations import load_migrations
from saga_runner.store.postgres import PostgresBackend, redact_url
from saga_runner.store.sqlite import SqliteBackend
from saga_store.helpers import new_schema, with_schema


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_postgres_is_a_store_error_without_the_password() -> None:
    url = f"postgresql://sidecar:s3cret@127.0.0.1:{_closed_port()}/sagas"
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as caught:
        await SagaStore.from_url(url, Path("."))
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_postgres_and_postgresql_schemes_open_a_postgres_backend(database_url: str) -> None:
    schema = new_schema()
    for url in (database_url, database_url.replace("postgresql://", "postgres://", 1)):
        store = await SagaStore.from_url(with_schema(url, schema), Path("."))
        try:
            assert isinstance(store.backend, PostgresBackend)
            assert store.backend.schema == schema
            await store.ping()
        finally:
            await store.close()


async def test_an_invalid_schema_name_is_refused(database_url: str) -> None:
    with pytest.raises(StoreError, match="invalid schema name"):
        await SagaStore.from_url(with_schema(database_url, 'x"; DROP TABLE y; --'), Path("."))


async def test_relative_sqlite_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    store = await SagaStore.from_url("sqlite:///data/sagas.db", tmp_path)
    try:
        assert isinstance(store.backend, SqliteBackend)
        assert await store.migrate() == [m.version for m in load_migrations("sqlite")]
    finally:
        await store.close()
    assert (tmp_path / "data" / "sagas.db").is_file()


async def test_absolute_sqlite_paths_are_used_as_given(tmp_path: Path) -> None:
    target = tmp_path / "abs.db"
    store = await SagaStore.from_url(f"sqlite:///{target}", Path("/nonexistent-base"))
    try:
        await store.ping()
    finally:
        await store.close()
    assert target.is_file()


async def test_in_memory_sqlite_works_for_tests() -> None:
    async with await SagaStore.from_url("sqlite:///:memory:", Path(".")) as store:
        assert await store.migrate() == [m.version for m in load_migrations("sqlite")]
        assert await store.in_flight_count() == 0


async def test_an_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open SQLite"):
        await SagaStore.from_url("sqlite:///file/sagas.db", tmp_path)


@pytest.mark.parametrize("url", ["mysql://db/sagas", "sqlite://relative.db", "sqlite:///"])
async def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError):
        await SagaStore.from_url(url, Path("."))


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_a_closed_store_fails_with_store_error(tmp_path: Path) -> None:
    store = await SagaStore.from_url("sqlite:///closed.db", tmp_path)
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()
