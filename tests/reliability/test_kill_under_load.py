"""``kill -9`` of a sidecar under mixed load (idempotent forwards and saga triggers on Redis and
PostgreSQL), then a replacement: every key is replayed, or answered "outcome unknown" when the kill
cut it after it may have been sent, never executed twice; every saga ends.

Sagas killed mid-step and resumed elsewhere are covered in depth by tests/durability; this test
is the mix: both features under load at once, and the clients' retries against the replacement.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Sidecar
from idempotency.conftest import delete_prefix, with_prefix
from saga_store.helpers import Target, new_schema, run_in_thread

from reliability.conftest import eventually, phase
from reliability.services import KeyedApp

LOCK_TIMEOUT = 1.0
FAST = {"attempts": 3, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"}
TERMINAL = ("completed", "compensated", "failed")


def step(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "action": {"service": "app", "method": "POST", "path": path, "body": {"step": name}},
        "compensation": {"service": "app", "method": "POST", "path": f"/undo/{name}"},
        "retry": FAST,
    }


ORDER_SAGA = {
    "name": "order",
    "trigger": {"method": "POST", "path": "/order"},
    "mode": "async",
    "business_id": "{{ input.order }}",
    "steps": [step("reserve", "/slow/50"), step("charge", "/slow/300")],
}


@dataclass
class Traffic:
    """What the clients sent before the kill: key -> the first answer (status or 0)."""

    forwards: dict[str, int] = field(default_factory=dict)
    triggers: dict[str, tuple[int, str | None]] = field(default_factory=dict)


@pytest.fixture
def schema(database_url: str) -> Iterator[Target]:
    target = Target.postgres(database_url, new_schema())
    run_in_thread(target.migrate())
    yield target
    run_in_thread(target.drop())


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"test-kill-{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(redis_url, name)


async def forward(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, bool]:
    """A covered POST /slow/300: its status (0 when the connection broke) and whether replayed."""
    try:
        async with http.post(
            f"{url}/slow/300", data=b"{}", headers={"Idempotency-Key": key}
        ) as response:
            await response.read()
            return response.status, response.headers.get("Idempotent-Replayed") == "true"
    except aiohttp.ClientError:
        return 0, False


async def start_order(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str | None]:
    """Trigger the order saga with ``key``: its status (0: connection broke) and saga id."""
    try:
        async with http.post(
            f"{url}/order", json={"order": key}, headers={"Idempotency-Key": key}
        ) as response:
            body = json.loads(await response.text())
            return response.status, body.get("saga_id")
    except aiohttp.ClientError:
        return 0, None


async def drive(
    http: aiohttp.ClientSession, url: str, traffic: Traffic, stop: asyncio.Event
) -> None:
    """Forward and trigger workers until ``stop``."""

    async def forwards(worker: int) -> None:
        for n in range(10_000):
            if stop.is_set():
                return
            key = f"f{worker}-{n}"
            traffic.forwards[key] = (await forward(http, url, key))[0]

    async def triggers(worker: int) -> None:
        for n in range(10_000):
            if stop.is_set():
                return
            key = f"t{worker}-{n}"
            traffic.triggers[key] = await start_order(http, url, key)

    await asyncio.gather(*[forwards(n) for n in range(6)], *[triggers(n) for n in range(3)])


async def retry_until_settled(
    call: Callable[[], Any], what: str, within: float = LOCK_TIMEOUT + 5
) -> Any:
    """Retry ``call`` while it answers 409 (the dead holder's lock), as a client would."""
    deadline = time.monotonic() + within
    while True:
        result = await call()
        if result[0] != 409:
            return result
        assert time.monotonic() < deadline, f"{what}: still 409 after {within}s"
        await asyncio.sleep(0.2)


async def saga_statuses(http: aiohttp.ClientSession, sidecar: Sidecar) -> dict[str, str]:
    """Every saga's status, through the admin API's pages."""
    statuses: dict[str, str] = {}
    path: str | None = "/sagas?limit=1000"
    while path:
        async with http.get(f"{sidecar.admin_url}{path}") as response:
            page = await response.json()
        statuses.update({item["id"]: item["status"] for item in page["items"]})
        path = page.get("next")
    return statuses


async def test_sidecar_killed_under_load_leaves_every_key_replayable_or_retryable(
    sidecar_process: Callable[..., Sidecar],
    keyed: tuple[KeyedApp, str],
    schema: Target,
    redis_url: str,
    prefix: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    app, url = keyed
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(ORDER_SAGA), encoding="utf-8")
    config = {
        "upstream": {"url": url},
        "services": {"app": url},
        "idempotency": {"store": with_prefix(redis_url, prefix), "lock_timeout": "1s"},
        "sagas": {"store": schema.url, "definitions": [str(tmp_path / "order.yaml")],
                  "lease": "1s", "recovery_interval": "200ms"},
    }  # fmt: skip
    first = sidecar_process(config)
    traffic, stop = Traffic(), asyncio.Event()
    load = asyncio.create_task(drive(http, first.url, traffic, stop))
    await asyncio.sleep(phase(1.5))
    first.process.kill()
    first.process.wait(10)
    stop.set()
    await load
    cut = [k for k, s in traffic.forwards.items() if s == 0]
    cut += [k for k, (s, _) in traffic.triggers.items() if s == 0]
    assert cut, "the kill cut no request: the test proves nothing"

    second = sidecar_process(config)
    for key, status in traffic.forwards.items():
        again, replayed = await retry_until_settled(lambda k=key: forward(http, second.url, k), key)
        if status == 201:  # the client had its answer: the retry is its replay
            assert again == 201 and replayed and app.count(key) == 1, key
        else:  # cut by the kill: replayed if stored, "outcome unknown" if it may have been sent
            assert again in (201, 504), key
            assert app.count(key) <= 1, f"{key}: executed again after the kill"
    saga_ids = set()
    answered: set[str] = set()  # trigger keys whose retry named their saga
    for key, (status, saga_id) in traffic.triggers.items():
        again, again_id = await retry_until_settled(
            lambda k=key: start_order(http, second.url, k), key
        )
        if status == 202:
            assert again == 202 and again_id == saga_id, "the retry started a second saga"
        else:  # cut by the kill: its saga (if any) is resumed; the retry may be "unknown"
            assert again in (202, 504), key
        if again == 202:
            saga_ids.add(again_id)
            answered.add(key)

    async def every_saga_finished() -> bool:
        statuses = await saga_statuses(http, second)
        return all(statuses.get(i) in TERMINAL for i in saga_ids)

    await eventually(every_saga_finished, "every saga finished", within=phase(30))
    statuses = await saga_statuses(http, second)
    assert {statuses[i] for i in saga_ids} == {"completed"}
    unknown = len(traffic.triggers) - len(answered)  # cut triggers answered "outcome unknown"
    assert len(saga_ids) <= len(statuses) <= len(saga_ids) + unknown, "a saga was started twice"
    for saga_id in saga_ids:
        assert app.count(f"{saga_id}:reserve:action") in (1, 2)
        assert app.count(f"{saga_id}:charge:action") in (1, 2)
    assert app.count(None) == 0
