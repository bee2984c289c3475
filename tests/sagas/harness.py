"""Helpers of the saga suite: the test saga, raw database reads, engine and sidecar harnesses.

``order_saga()`` is the 3-step saga most tests run (``reserve`` on inventory, ``charge`` on
payments, ``ship`` on shipping, each with a compensation) with 10 ms backoffs, returned as a
dict a test may change before it is written to a YAML file. ``dump_tables`` reads every saga
table behind the store's back, for "this text is stored nowhere" assertions.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from saga_store.helpers import TABLES, Target

from proxy.keys import SAGAS
from saga_runner.definition import SagaDefinition, load_definition
from saga_runner.records import SagaDetail, SagaInstance
from saga_runner.runtime import SagaRuntime
from saga_runner.states import SagaStatus
from sagas.services import FakeServices

SERVICES = ("inventory", "payments", "shipping")
FAST_RETRY = {"attempts": 3, "backoff": "10ms", "multiplier": 2, "max_backoff": "20ms"}
TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})
ORDER = {"order_no": "A-1", "amount": 12.5, "items": [1]}
"""A trigger body the order saga accepts."""
PROBLEM = "application/problem+json"


def order_saga(**overrides: Any) -> dict[str, Any]:
    """The 3-step test saga as a dict (``overrides`` replace top-level keys)."""
    saga: dict[str, Any] = {
        "name": "order",
        "trigger": {"method": "POST", "path": "/api/orders"},
        "mode": "sync",
        "business_id": "{{ input.order_no }}",
        "steps": [
            {
                "name": "reserve",
                "action": {
                    "service": "inventory",
                    "method": "POST",
                    "path": "/reservations",
                    "body": {"order_no": "{{ input.order_no }}", "items": "{{ input.items }}"},
                },
                "compensation": {
                    "service": "inventory",
                    "method": "DELETE",
                    "path": "/reservations/{{ steps.reserve.body.id }}",
                    "retry": FAST_RETRY,
                },
                "retry": FAST_RETRY,
                "timeout": "2s",
            },
            {
                "name": "charge",
                "action": {
                    "service": "payments",
                    "method": "POST",
                    "path": "/charges",
                    "body": {
                        "amount": "{{ input.amount }}",
                        "reservation": "{{ steps.reserve.body.id }}",
                    },
                },
                # Keyed by the saga, not the charge's answer: undoable after a timeout too.
                "compensation": {
                    "service": "payments",
                    "method": "POST",
                    "path": "/charges/by-saga/{{ saga.id }}/refund",
                    "retry": FAST_RETRY,
                },
                "retry": FAST_RETRY,
                "timeout": "2s",
            },
            {
                "name": "ship",
                "action": {
                    "service": "shipping",
                    "method": "POST",
                    "path": "/shipments",
                    "body": {"order_no": "{{ input.order_no }}"},
                },
                "compensation": {
                    "service": "shipping",
                    "method": "DELETE",
                    "path": "/shipments/{{ steps.ship.body.id }}",
                    "retry": FAST_RETRY,
                },
                "retry": FAST_RETRY,
                "timeout": "2s",
            },
        ],
        "response": {
            "status": 201,
            "body": {
                "reservation": "{{ steps.reserve.body.id }}",
                "charge": "{{ steps.charge.body }}",
                "shipment": "{{ steps.ship.body.id }}",
            },
        },
    }
    saga.update(overrides)
    return saga


def with_step(saga: Mapping[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    """A copy of ``saga`` whose step ``name`` has ``changes`` merged in (one level deep)."""
    result = copy.deepcopy(dict(saga))
    for step in result["steps"]:
        if step["name"] == name:
            for key, value in changes.items():
                if isinstance(value, Mapping) and isinstance(step.get(key), Mapping):
                    step[key] = {**step[key], **value}
                else:
                    step[key] = value
            return result
    raise KeyError(name)


def write_saga(directory: Path, saga: Mapping[str, Any]) -> Path:
    """Write ``saga`` as ``directory/<name>.yaml`` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{saga['name']}.yaml"
    path.write_text(yaml.safe_dump(dict(saga), sort_keys=False), encoding="utf-8")
    return path


def load_saga(directory: Path, saga: Mapping[str, Any]) -> SagaDefinition:
    """Write ``saga`` to a file and load it the way the sidecar does."""
    return load_definition(write_saga(directory, saga), services=SERVICES)


@dataclass(frozen=True)
class Database:
    """The database of one test: a store URL the runtime opens, and raw access behind it."""

    target: Target

    @property
    def url(self) -> str:
        """The ``sagas.store`` URL (absolute SQLite path or PostgreSQL with ``?schema=``)."""
        if self.target.backend == "sqlite":
            return f"sqlite:///{self.target.raw_url}"
        return self.target.url

    async def count(self, table: str) -> int:
        """Rows in ``table``."""
        return await self.target.count(table)

    async def dump(self) -> str:
        """Every row of every saga table as JSON text."""
        rows: dict[str, list[Any]] = {}
        for table in TABLES:
            sql = f"SELECT * FROM {table}"
            if self.target.backend == "sqlite":
                with closing(sqlite3.connect(self.target.raw_url)) as conn:
                    rows[table] = [list(r) for r in conn.execute(sql).fetchall()]
                continue
            conn = await asyncpg.connect(
                self.target.raw_url, server_settings={"search_path": self.target.schema}
            )
            try:
                rows[table] = [list(r.values()) for r in await conn.fetch(sql)]
            finally:
                await conn.close()
        return json.dumps(rows, default=str)


@dataclass
class EngineRun:
    """A saga started and driven to its end through the engine."""

    detail: SagaDetail

    @property
    def status(self) -> SagaStatus:
        """The instance's final status."""
        return self.detail.instance.status

    def step_statuses(self) -> dict[str, str]:
        """Step name -> status value."""
        return {s.step_name: s.status.value for s in self.detail.steps}


@dataclass
class EngineHarness:
    """A ``SagaRuntime`` on the test's database, calling ``FakeServices``."""

    runtime: SagaRuntime
    services: FakeServices
    definition: SagaDefinition

    async def run(
        self,
        input_data: Any,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> EngineRun:
        """Start the saga with ``input_data`` and execute it to its end, as a trigger does
        (the first call announced by the instance's creation, no read before the run)."""
        engine = self.runtime.engine
        trigger = headers or {}
        created = await engine.start(
            self.definition, input_data, trigger, key, call_headers=trigger
        )
        assert created.lease is not None
        await engine.execute(
            self.definition, created.lease, trigger, input_data=input_data, started=created
        )
        return EngineRun(await self.runtime.store.get(created.saga.id))


@dataclass
class SidecarHarness:
    """An in-process sidecar (public and admin apps on real ports) and its fake services."""

    public: web.Application
    url: str
    admin_url: str
    services: FakeServices

    @property
    def runtime(self) -> SagaRuntime:
        """The sidecar's open saga runtime."""
        return self.public[SAGAS].runtime

    async def post(
        self,
        session: aiohttp.ClientSession,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """POST JSON (or raw ``data``) to the public listener; return status, headers, body."""
        sent = data if data is not None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        async with session.post(self.url + path, data=sent, headers=all_headers) as response:
            raw = await response.read()
            parsed = json.loads(raw) if raw else None
            return response.status, dict(response.headers), parsed

    async def only_saga(self) -> SagaDetail:
        """The one saga instance in the store, with its steps."""
        page = await self.runtime.store.list_sagas()
        assert len(page.items) == 1, page.items
        return await self.runtime.store.get(page.items[0].id)

    async def finished(self, saga_id: str, within: float = 5.0) -> SagaInstance:
        """Poll the store until the saga reaches a terminal status."""
        async with asyncio.timeout(within):
            while True:
                saga = await self.runtime.store.get_instance(saga_id)
                if saga.status in TERMINAL:
                    return saga
                await asyncio.sleep(0.02)

    async def metrics(self, session: aiohttp.ClientSession) -> dict[tuple[str, str], float]:
        """Scrape the admin ``/metrics``: (sample name, sorted labels as text) -> value."""
        async with session.get(self.admin_url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[(sample.name, labels)] = sample.value
        return samples
