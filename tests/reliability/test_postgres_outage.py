"""PostgreSQL stopped (``pg_ctl -m immediate``, as in a crash) while sagas are mid-step, and
started again: the running sagas pause, lose nothing, re-send only with their step keys, and
finish; triggers during the outage get 503; /readyz names the saga store, then recovers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from conftest import Sidecar
from saga_store.helpers import with_schema

from reliability.conftest import eventually
from reliability.services import KeyedApp, PostgresServer
from saga_runner.store import SagaStore

SAGAS = 4
FAST = {"attempts": 3, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"}
TERMINAL = ("completed", "compensated", "failed")


def step(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "action": {"service": "app", "method": "POST", "path": path, "body": {"step": name}},
        "compensation": {"service": "app", "method": "POST", "path": f"/undo/{name}"},
        "retry": FAST,
        "timeout": "10s",
    }


ORDER_SAGA = {
    "name": "order",
    "trigger": {"method": "POST", "path": "/order"},
    "mode": "async",
    "business_id": "{{ input.order }}",
    "steps": [step("reserve", "/reserve"), step("charge", "/slow/1500"), step("ship", "/ship")],
}


@pytest.fixture
async def schema_url(private_pg: PostgresServer) -> str:
    """A fresh migrated schema on the private PostgreSQL."""
    url = with_schema(private_pg.url, f"outage_{uuid.uuid4().hex[:8]}")
    store = await SagaStore.from_url(url, Path.cwd())
    await store.migrate()
    await store.close()
    return url


async def trigger(http: aiohttp.ClientSession, sidecar: Sidecar, order: str) -> tuple[int, Any]:
    async with http.post(f"{sidecar.url}/order", json={"order": order}) as response:
        return response.status, json.loads(await response.text())


async def readiness(http: aiohttp.ClientSession, sidecar: Sidecar) -> tuple[int, str]:
    async with http.get(f"{sidecar.admin_url}/readyz") as response:
        return response.status, await response.text()


async def saga_rows(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each saga's status and its steps' statuses and retry counts, read directly."""
    dsn, _, query = url.partition("?")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": query.split("=")[1]})
    try:
        rows: dict[str, dict[str, Any]] = {}
        for saga_id in ids:
            status = await conn.fetchval("SELECT status FROM saga_instances WHERE id=$1", saga_id)
            steps = await conn.fetch(
                "SELECT step_name, status, retry_count FROM saga_steps WHERE saga_id=$1 "
                "ORDER BY step_order",
                saga_id,
            )
            rows[saga_id] = {"status": status, "steps": [dict(s) for s in steps]}
        return rows
    finally:
        await conn.close()


async def test_sagas_pause_through_a_postgres_outage_and_finish_with_each_effect_once(
    sidecar_process: Callable[..., Sidecar],
    keyed: tuple[KeyedApp, str],
    private_pg: PostgresServer,
    schema_url: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    app, url = keyed
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(ORDER_SAGA), encoding="utf-8")
    sidecar = sidecar_process(
        {
            "upstream": {"url": url},
            "services": {"app": url},
            "sagas": {"store": schema_url, "definitions": [str(tmp_path / "order.yaml")],
                      "lease": "1s", "recovery_interval": "200ms"},
        }
    )  # fmt: skip
    ids = []
    for n in range(SAGAS):
        status, body = await trigger(http, sidecar, f"o-{n}")
        assert status == 202, body
        ids.append(body["saga_id"])
    await eventually(lambda: app.paths["/slow/1500"] >= SAGAS, "every saga mid-charge")

    private_pg.stop("immediate")
    status, problem = await trigger(http, sidecar, "during-outage")
    assert status == 503 and "saga store" in problem["detail"], problem
    ready, body = await readiness(http, sidecar)
    assert ready == 503 and "saga_store" in body
    await asyncio.sleep(2.0)  # every charge answers while the store is down
    private_pg.start()

    async def all_terminal() -> bool:
        rows = await saga_rows(schema_url, ids)
        return all(r["status"] in TERMINAL for r in rows.values())

    await eventually(all_terminal, "every saga finished after the restart", within=30)
    rows = await saga_rows(schema_url, ids)
    for saga_id in ids:
        assert rows[saga_id]["status"] == "completed", rows[saga_id]
        assert [s["status"] for s in rows[saga_id]["steps"]] == ["succeeded"] * 3
        assert app.count(f"{saga_id}:reserve:action") == 1
        assert app.count(f"{saga_id}:ship:action") == 1
        charges = app.count(f"{saga_id}:charge:action")
        assert charges in (1, 2)  # re-sent with its key when its answer was not recorded
        assert rows[saga_id]["steps"][1]["retry_count"] >= charges
    assert app.count(None) == 0, "a step was called without its key"
    assert not [p for p in app.paths if p.startswith("/undo")], "nothing was compensated"
    assert (await readiness(http, sidecar))[0] == 200
    status, body = await trigger(http, sidecar, "after-outage")
    assert status == 202
    assert sidecar.process.poll() is None
