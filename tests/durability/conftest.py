"""Fixtures of the durability suite: real sidecar processes on a fresh saga store.

Every test gets its own store (a PostgreSQL schema, or a SQLite file in its ``tmp_path``;
migrated, dropped afterwards), its own recording upstream (``Ledger``, served from a background
thread) and a ``SagaCluster`` that writes saga files and starts ``saga-sidecar serve``
subprocesses on that store with a short lease (1 s), a fast recovery loop (200 ms) and 10 ms
backoffs, so crashes and takeovers happen within seconds.

Fixtures:
    store_kind       ``postgresql`` (default) or ``sqlite``: a test runs on both with
                     ``@pytest.mark.parametrize("store_kind", STORES)``.
    records          a ``Records``: the test's store read through ``SagaStore`` (either kind).
    ledger_upstream  ``(Ledger, url)``: the test's recording upstream on a real port.
    ledger           that ``Ledger`` alone.
    pg               a ``Db``: the test's PostgreSQL schema, read and written behind the
                     sidecars' backs (PostgreSQL only).
    cluster          a ``SagaCluster``: ``write_saga(doc)``, ``start(**overrides) -> Sidecar``,
                     ``await trigger(http, sidecar, name, body) -> saga id``.
    http             an ``aiohttp.ClientSession``.

Helpers: ``saga``/``step`` build saga documents, ``eventually`` polls, ``kill`` is ``kill -9``,
``metric`` reads one ``/metrics`` sample, ``log_events`` filters a sidecar's log by saga id.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from conftest import Sidecar, Upstream, deep_merge
from saga_store.helpers import new_schema, with_schema

from durability.ledger import Ledger
from saga_runner.records import SagaInstance, SagaStep
from saga_runner.store import SagaStore

STORES = ("postgresql", "sqlite")
LEASE = "1s"
RECOVERY_INTERVAL = "200ms"
FAST_RETRY = {"attempts": 3, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"}
TERMINAL = ("completed", "compensated", "failed")


async def eventually(
    check: Callable[[], Any], what: str, within: float = 10.0, every: float = 0.05
) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; return that.

    Fails naming ``what`` when ``within`` seconds pass first.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s (last: {result!r})")
        await asyncio.sleep(every)


def step(
    name: str,
    path: str,
    *,
    undo: str | None = None,
    service: str = "ledger",
    retry: dict[str, Any] | None = None,
    timeout: str = "10s",
) -> dict[str, Any]:
    """A saga step calling ``POST path`` (and ``POST undo`` to compensate, when given)."""
    doc: dict[str, Any] = {
        "name": name,
        "action": {"service": service, "method": "POST", "path": path, "body": {"step": name}},
        "retry": retry or FAST_RETRY,
        "timeout": timeout,
    }
    if undo is not None:
        doc["compensation"] = {
            "service": service,
            "method": "POST",
            "path": undo,
            "body": {"undo": name},
            "retry": FAST_RETRY,
        }
    return doc


def saga(name: str, steps: list[dict[str, Any]], mode: str = "async") -> dict[str, Any]:
    """A saga document triggered by ``POST /start/<name>``."""
    return {
        "name": name,
        "trigger": {"method": "POST", "path": f"/start/{name}"},
        "mode": mode,
        "business_id": "{{ input.order }}",
        "steps": steps,
    }


def kill(sidecar: Sidecar) -> None:
    """``kill -9`` the sidecar and reap it."""
    sidecar.process.kill()
    sidecar.process.wait(10)


def metric(sidecar: Sidecar, sample: str) -> float | None:
    """The value of the ``/metrics`` sample named exactly ``sample`` (with labels), if exported."""
    with urllib.request.urlopen(f"{sidecar.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def log_events(sidecar: Sidecar, saga_id: str) -> list[dict[str, Any]]:
    """The sidecar's JSON log records about ``saga_id``."""
    return [r for r in sidecar.log_records() if r.get("saga_id") == saga_id]


@dataclass
class Records:
    """The test's saga store (PostgreSQL or SQLite) read through saga_runner's ``SagaStore``.

    ``url`` is the store URL the sidecars use; ``schema`` the PostgreSQL schema (empty on SQLite).
    """

    kind: str
    url: str
    schema: str
    store: SagaStore

    async def instance(self, saga_id: str) -> SagaInstance:
        """The saga's instance record."""
        return await self.store.get_instance(saga_id)

    async def steps(self, saga_id: str) -> tuple[SagaStep, ...]:
        """The saga's step records, in step order."""
        return (await self.store.get(saga_id)).steps

    async def wait_status(
        self, saga_id: str, statuses: tuple[str, ...] = TERMINAL, within: float = 15.0
    ) -> SagaInstance:
        """Wait until the saga is in one of ``statuses``; return its instance record."""

        async def reached() -> SagaInstance | None:
            found = await self.instance(saga_id)
            return found if found.status in statuses else None

        instance: SagaInstance = await eventually(
            reached, f"saga {saga_id} in {statuses}", within=within
        )
        return instance


@dataclass
class Db:
    """The test's schema, queried directly (not through a sidecar).

    ``url`` is the store URL (with ``?schema=``), ``dsn`` the plain server URL.
    """

    url: str
    dsn: str
    schema: str
    conn: Any
    records: Records
    stores: list[SagaStore] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)

    async def instance(self, saga_id: str) -> dict[str, Any]:
        """The ``saga_instances`` row."""
        row = await self.conn.fetchrow("SELECT * FROM saga_instances WHERE id = $1", saga_id)
        assert row is not None, f"no saga {saga_id}"
        return dict(row)

    async def steps(self, saga_id: str) -> list[dict[str, Any]]:
        """The ``saga_steps`` rows, in step order."""
        sql = "SELECT * FROM saga_steps WHERE saga_id = $1 ORDER BY step_order"
        return [dict(r) for r in await self.conn.fetch(sql, saga_id)]

    async def attempts(self, saga_id: str) -> list[dict[str, Any]]:
        """The ``saga_step_attempts`` rows, in insertion order."""
        sql = "SELECT * FROM saga_step_attempts WHERE saga_id = $1 ORDER BY id"
        return [dict(r) for r in await self.conn.fetch(sql, saga_id)]

    async def wait_status(
        self, saga_id: str, statuses: tuple[str, ...] = TERMINAL, within: float = 15.0
    ) -> dict[str, Any]:
        """Wait until the saga is in one of ``statuses``; return its row."""
        await self.records.wait_status(saga_id, statuses, within)
        return await self.instance(saga_id)

    async def open_connection(self) -> Any:
        """Another raw asyncpg connection on this schema (closed after the test)."""
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": self.schema})
        self.connections.append(conn)
        return conn

    async def open_store(self, clock: Any = None) -> SagaStore:
        """A ``SagaStore`` on this schema (closed after the test)."""
        store = await SagaStore.from_url(self.url, Path.cwd(), clock=clock)
        self.stores.append(store)
        return store


@dataclass
class SagaCluster:
    """Saga files and saga-sidecar processes sharing the test's saga store."""

    launch: Callable[..., Sidecar]
    workdir: Path
    store_url: str
    ledger_url: str
    services: dict[str, str] = field(default_factory=dict)

    @property
    def saga_dir(self) -> Path:
        """Where saga files live (``sagas/*.yaml`` next to the sidecar configs)."""
        return self.workdir / "sagas"

    def write_saga(self, doc: dict[str, Any]) -> Path:
        """Write (or overwrite) ``sagas/<name>.yaml``."""
        self.saga_dir.mkdir(exist_ok=True)
        path = self.saga_dir / f"{doc['name']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A saga-sidecar config on the test's store, with ``overrides`` merged in."""
        base = {
            "shutdown_grace": "1s",
            "upstream": {"url": self.ledger_url},
            "services": {"ledger": self.ledger_url, **self.services},
            "sagas": {
                "store": self.store_url,
                "definitions": ["sagas/*.yaml"],
                "recovery_interval": RECOVERY_INTERVAL,
                "lease": LEASE,
            },
        }
        return deep_merge(base, overrides)

    def start(self, **overrides: Any) -> Sidecar:
        """Start a saga-sidecar process; returns once it is healthy."""
        return self.launch(self.config(**overrides))

    async def trigger(
        self, http: aiohttp.ClientSession, sidecar: Sidecar, name: str, body: dict[str, Any]
    ) -> str:
        """Start saga ``name`` through ``sidecar`` (async mode); return its id."""
        async with http.post(f"{sidecar.url}/start/{name}", json=body) as response:
            assert response.status == 202, await response.text()
            payload = json.loads(await response.text())
        saga_id: str = payload["saga_id"]
        return saga_id


@pytest.fixture
def ledger_upstream(app_in_thread: Callable[..., Upstream]) -> Iterator[tuple[Ledger, str]]:
    """A fresh ``Ledger`` served from the background thread, and its URL."""
    ledger = Ledger()
    upstream = app_in_thread(ledger.app())
    yield ledger, upstream.url
    upstream.stop()


@pytest.fixture
def ledger(ledger_upstream: tuple[Ledger, str]) -> Ledger:
    """The test's recording upstream."""
    return ledger_upstream[0]


@pytest.fixture
def store_kind() -> str:
    """The saga store the test runs on; ``postgresql`` unless the test parametrizes it."""
    return "postgresql"


@pytest.fixture
async def records(store_kind: str, database_url: str, tmp_path: Path) -> AsyncIterator[Records]:
    """A fresh, migrated store of ``store_kind`` for this test; dropped afterwards."""
    schema = new_schema() if store_kind == "postgresql" else ""
    if schema:
        url = with_schema(database_url, schema)
    else:
        url = f"sqlite:///{tmp_path / 'store' / 'sagas.db'}"
    store = await SagaStore.from_url(url, Path.cwd())
    try:
        await store.migrate()
        yield Records(store_kind, url, schema, store)
    finally:
        await store.close()
        if schema:
            conn = await asyncpg.connect(database_url)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


@pytest.fixture
async def pg(records: Records, database_url: str) -> AsyncIterator[Db]:
    """The test's PostgreSQL schema, queried behind the sidecars' backs."""
    assert records.kind == "postgresql", "pg reads a PostgreSQL store; use records"
    conn = await asyncpg.connect(database_url, server_settings={"search_path": records.schema})
    db = Db(records.url, database_url, records.schema, conn, records)
    try:
        yield db
    finally:
        for opened in db.stores:
            await opened.close()
        for other in db.connections:
            await other.close()
        await conn.close()


@pytest.fixture
def cluster(
    records: Records,
    ledger_upstream: tuple[Ledger, str],
    sidecar_process: Callable[..., Sidecar],
    tmp_path: Path,
) -> Iterator[SagaCluster]:
    """Saga sidecars on the test's store; any left stopped by SIGSTOP are continued first."""
    launched: list[Sidecar] = []

    def launch(config: dict[str, Any], env: dict[str, str] | None = None) -> Sidecar:
        sidecar = sidecar_process(config, env)
        launched.append(sidecar)
        return sidecar

    yield SagaCluster(launch, tmp_path, records.url, ledger_upstream[1])
    for sidecar in launched:
        if sidecar.process.poll() is None:
            sidecar.signal(signal.SIGCONT)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for triggers and admin calls."""
    async with aiohttp.ClientSession() as session:
        yield session
