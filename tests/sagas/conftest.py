"""Fixtures of the saga-runner suite: every test runs against SQLite and PostgreSQL.

PostgreSQL: one schema per test session with a random name (``?schema=`` in the store URL),
migrated once, emptied before each test and dropped at the end. SQLite: a fresh file under
``tmp_path``. Upstream services are real aiohttp apps on 127.0.0.1 (``FakeServices``).

Fixtures:
    backend        ``"sqlite"`` or ``"postgres"`` (parametrized).
    database       the test's empty ``Database`` (store URL plus raw reads).
    services       ``FakeServices`` serving inventory, payments and shipping on real ports.
    make_engine    ``await make_engine(saga_dict=None, redact=None, keys=()) -> EngineHarness``.
    make_sidecar   ``await make_sidecar(*saga_dicts, **config) -> SidecarHarness``: the public
                   and admin apps of an in-process sidecar on real ports.
    client         a plain ``aiohttp.ClientSession``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Upstream, deep_merge
from saga_store.helpers import Target

from proxy.app import build_apps
from proxy.config import LoadedConfig, SidecarConfig
from saga_runner.catalog import SagaCatalog
from saga_runner.observer import SagaObserver
from saga_runner.runtime import RuntimeSettings, SagaRuntime
from sagas.harness import (
    SERVICES,
    Database,
    EngineHarness,
    SidecarHarness,
    load_saga,
    order_saga,
    write_saga,
)
from sagas.services import FakeServices

LEASE_SECONDS = 5.0

EngineFactory = Callable[..., Awaitable[EngineHarness]]
SidecarFactory = Callable[..., Awaitable[SidecarHarness]]


@pytest.fixture
async def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    """This test's empty saga database."""
    if backend == "sqlite":
        return Database(Target.sqlite(tmp_path / "sagas.db"))
    target: Target = request.getfixturevalue("pg_session_schema")
    await target.truncate()
    return Database(target)


@pytest.fixture
async def services(upstream_server: Callable[..., Awaitable[Upstream]]) -> FakeServices:
    """The fake inventory, payments and shipping services, listening on 127.0.0.1."""
    fake = FakeServices()
    for name in SERVICES:
        served = await upstream_server(fake.app(name))
        fake.urls[name] = served.url
    return fake


@pytest.fixture
async def make_engine(
    database: Database, services: FakeServices, tmp_path: Path
) -> AsyncIterator[EngineFactory]:
    """``await make_engine(saga_dict=None, redact=None, observer=None, keys=())``; closed after."""
    opened: list[SagaRuntime] = []

    async def make(
        saga: dict[str, Any] | None = None,
        redact: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
        observer: SagaObserver | None = None,
        keys: tuple[str, ...] = (),
    ) -> EngineHarness:
        definition = load_saga(tmp_path / "sagas", saga or order_saga())
        headers, fields = redact or ((), ())
        settings = RuntimeSettings(
            store_url=database.url,
            base_dir=tmp_path,
            migrate=True,
            lease_seconds=LEASE_SECONDS,
            default_timeout=5.0,
            services=dict(services.urls),
            redact_headers=headers,
            redact_fields=fields,
            encryption_keys=keys,
        )
        catalog = SagaCatalog.of([(definition, tmp_path / "sagas")])
        runtime = await SagaRuntime.open(settings, catalog, observer)
        opened.append(runtime)
        return EngineHarness(runtime, services, definition)

    yield make
    for runtime in opened:
        await runtime.close()


@pytest.fixture
def make_sidecar(
    database: Database,
    services: FakeServices,
    tmp_path: Path,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> SidecarFactory:
    """``await make_sidecar(*saga_dicts, **config)``: an in-process sidecar on real ports.

    The config defaults to the contract's defaults (``memory://`` idempotency store) plus the
    fake services, the test's saga database, and the sagas written under ``tmp_path/sagas``.
    """

    async def make(*sagas: dict[str, Any], **config: Any) -> SidecarHarness:
        for saga in sagas or (order_saga(),):
            write_saga(tmp_path / "sagas", saga)
        base = {
            "upstream": {"url": services.urls["inventory"], "timeout": "5s"},
            "services": dict(services.urls),
            "sagas": {
                "store": database.url,
                "definitions": ["sagas/*.yaml"],
                "lease": f"{LEASE_SECONDS:g}s",
            },
        }
        loaded = LoadedConfig(
            path=tmp_path / "sidecar.yaml",
            config=SidecarConfig.model_validate(deep_merge(base, config)),
        )
        apps = build_apps(loaded)
        public = await upstream_server(apps.public)
        admin = await upstream_server(apps.admin)
        return SidecarHarness(apps.public, public.url, admin.url, services)

    return make


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session that keeps no cookies."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
