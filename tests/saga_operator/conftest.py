"""Fixtures of the operator suite (admin API, CLI, dashboard) over SQLite and PostgreSQL.

PostgreSQL: one migrated schema per test session (random name), emptied before each test and
dropped at the end; SQLite: a fresh file per test. The sidecar runs in-process (its public and
admin apps on real ports, built by ``build_apps`` from a config file the CLI can read too), in
front of a real ``Shop`` upstream.

Fixtures:
    backend        ``"sqlite"`` or ``"postgres"`` (parametrized; a module may override it).
    store_url      the test's saga store URL (migrated, empty).
    shop           the ``Shop`` upstream, served on 127.0.0.1.
    make_sidecar   ``await make_sidecar(token="") -> Sidecar``.
    seeder         a ``Seeder`` whose store is closed after the test.
    client         a plain ``aiohttp.ClientSession``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import Upstream
from saga_store.helpers import Target

from proxy.app import build_apps
from proxy.config import LoadedConfig, load_config
from saga_operator.harness import Seeder, an_hour_ago, write_config
from saga_operator.shop import Shop
from saga_runner.store import SagaStore


@pytest.fixture
async def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The test's migrated, empty saga store."""
    if backend == "sqlite":
        target = Target.sqlite(tmp_path / "sagas.db")
        await target.migrate()
    else:
        target = request.getfixturevalue("pg_session_schema")
        await target.truncate()
    return target.url


@pytest.fixture
async def shop(upstream_server: Callable[..., Awaitable[Upstream]]) -> AsyncIterator[Shop]:
    """The orders/payments upstream; a blocked charge is released at the end of the test."""
    fake = Shop()
    served = await upstream_server(fake.app())
    fake.url = served.url
    yield fake
    fake.release_charge.set()
    for gate, _ in fake.gates.values():
        gate.set()


@dataclass(frozen=True)
class Sidecar:
    """An in-process sidecar: its config file and the URLs of its two listeners."""

    loaded: LoadedConfig
    url: str
    admin_url: str

    @property
    def config_path(self) -> str:
        """The config file, for ``saga-sidecar ... --config``."""
        return str(self.loaded.path)


@pytest.fixture
def make_sidecar(
    store_url: str,
    shop: Shop,
    tmp_path: Path,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> Callable[..., Awaitable[Sidecar]]:
    """``await make_sidecar(token="")``: both apps of a sidecar over the test's store."""

    async def make(token: str = "") -> Sidecar:
        loaded = load_config(write_config(tmp_path, store_url, shop.url, token))
        apps = build_apps(loaded)
        public = await upstream_server(apps.public)
        admin = await upstream_server(apps.admin)
        return Sidecar(loaded, public.url, admin.url)

    return make


@pytest.fixture
async def seeder(store_url: str, tmp_path: Path) -> AsyncIterator[Seeder]:
    """Seeds sagas one second apart, starting an hour ago."""
    clock = an_hour_ago()
    store = await SagaStore.from_url(store_url, tmp_path, clock=clock)
    yield Seeder(store, clock)
    await store.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session that keeps no cookies."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
