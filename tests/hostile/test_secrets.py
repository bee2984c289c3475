"""Secrets go where they are sent and nowhere else: one canary per kind of secret travels through
a real sidecar (a saga and an idempotent forward), reaches the services, and then appears in no
log line, no saga row, no Redis key or value, no admin answer, no dashboard page, no metric.

(An idempotent forward's stored answer is the app's response as sent, body included: a body
that echoes a secret is replayed with it. The app's ``Set-Cookie`` is never stored.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from conftest import Sidecar
from idempotency.conftest import delete_prefix, with_prefix
from redis.asyncio import Redis
from saga_store.helpers import Target, new_schema, run_in_thread

from hostile.services import Recorder

TOKEN = "secrets-admin-token"
REDACTED_HEADERS = ["Authorization", "Cookie", "Set-Cookie", "X-Api-Key"]
CANARIES = {
    name: f"canary-{name}-{uuid.uuid4().hex[:10]}"
    for name in ("auth", "cookie", "apikey", "tenant", "key", "card", "cvv", "pin", "password",
                 "direct-auth", "direct-key")
}  # fmt: skip

SAGA = {
    "name": "pay",
    "trigger": {"method": "POST", "path": "/secret/pay"},
    "mode": "sync",
    "business_id": "{{ input.order }}",
    "steps": [
        {
            "name": "charge",
            "action": {
                "service": "echo",
                "method": "POST",
                "path": "/charge/mirror",
                "headers": {
                    "Authorization": "{{ headers.authorization }}",
                    "X-Api-Key": "{{ headers.x-api-key }}",
                    "X-Tenant-Secret": "{{ headers.x-tenant-secret }}",
                },
                "body": {
                    "order": "{{ input.order }}",
                    "card_number": "{{ input.card_number }}",
                    "nested": {"cvv": "{{ input.cvv }}", "items": [{"pin": "{{ input.pin }}"}]},
                    "password": "{{ input.password }}",
                },
            },
            "retry": {"attempts": 1},
        }
    ],
    "response": {"status": 201, "body": {"ok": True}},
}


@pytest.fixture
def schema(database_url: str) -> Iterator[Target]:
    """A fresh migrated schema, dropped after the test."""
    target = Target.postgres(database_url, new_schema())
    run_in_thread(target.migrate())
    yield target
    run_in_thread(target.drop())


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix for the test, deleted afterwards."""
    name = f"test-secrets-{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(redis_url, name)


@pytest.fixture
def sidecar(
    sidecar_process: Callable[..., Sidecar],
    tmp_path: Path,
    recorder: tuple[Recorder, str],
    schema: Target,
    redis_url: str,
    prefix: str,
) -> Sidecar:
    """A sidecar on Redis and PostgreSQL with two extra redacted names."""
    (tmp_path / "pay.yaml").write_text(yaml.safe_dump(SAGA), encoding="utf-8")
    return sidecar_process(
        {
            "upstream": {"url": recorder[1]},
            "admin": {"token": TOKEN},
            "services": {"echo": recorder[1]},
            "idempotency": {"store": with_prefix(redis_url, prefix)},
            "sagas": {"store": schema.url, "definitions": [str(tmp_path / "pay.yaml")]},
            "redact": {
                "headers": [
                    "Authorization",
                    "Cookie",
                    "Set-Cookie",
                    "X-Api-Key",
                    "X-Tenant-Secret",
                ],
                "fields": ["card_number", "cvv", "password", "pin"],
            },
        }
    )


async def every_row(schema: Target) -> str:
    """Every row of every table in the schema, as JSON text."""
    conn = await asyncpg.connect(schema.raw_url, server_settings={"search_path": schema.schema})
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema.schema,
        )
        texts = []
        for table in tables:
            rows = await conn.fetch(f'SELECT row_to_json(t)::text AS j FROM "{table[0]}" t')
            texts += [row["j"] for row in rows]
        return "\n".join(texts)
    finally:
        await conn.close()


async def every_redis_byte(redis_url: str, prefix: str) -> bytes:
    """Every key under ``prefix`` and its value, whatever its type."""
    client = Redis.from_url(redis_url)
    try:
        dumped = []
        async for key in client.scan_iter(match=f"{prefix}:*"):
            dumped.append(key)
            kind = (await client.type(key)).decode()
            value: Any = {
                "string": client.get,
                "hash": client.hgetall,
                "list": lambda k: client.lrange(k, 0, -1),
                "set": client.smembers,
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            }[kind](key)
            dumped.append(repr(await value).encode())
        return b"\n".join(dumped)
    finally:
        await client.aclose()


async def admin_texts(http: aiohttp.ClientSession, sidecar: Sidecar, saga_id: str) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    texts = []
    for path in ("/sagas", f"/sagas/{saga_id}", "/dashboard", f"/dashboard/sagas/{saga_id}",
                 "/metrics"):  # fmt: skip
        async with http.get(f"{sidecar.admin_url}{path}", headers=headers) as response:
            assert response.status == 200, path
            texts.append(await response.text())
    return "\n".join(texts)


async def test_no_secret_is_logged_stored_or_shown_anywhere(
    sidecar: Sidecar,
    recorder: tuple[Recorder, str],
    schema: Target,
    redis_url: str,
    prefix: str,
) -> None:
    c = CANARIES
    trigger_headers = {
        "Authorization": f"Bearer {c['auth']}",
        "Cookie": f"sid={c['cookie']}",
        "X-Api-Key": c["apikey"],
        "X-Tenant-Secret": c["tenant"],
        "Idempotency-Key": c["key"],
    }
    body = {"order": "o-1", "card_number": c["card"], "cvv": c["cvv"], "pin": c["pin"],
            "password": c["password"]}  # fmt: skip
    direct_headers = {"Authorization": f"Bearer {c['direct-auth']}",
                      "Idempotency-Key": c["direct-key"]}  # fmt: skip
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            f"{sidecar.url}/secret/pay", json=body, headers=trigger_headers
        ) as response:
            assert response.status == 201, await response.text()
            saga_id = response.headers["Saga-Id"]
        for _ in range(2):  # executed, then replayed from Redis
            async with http.post(
                f"{sidecar.url}/direct", json={"n": 1}, headers=direct_headers
            ) as response:
                assert response.status == 200
        shown = await admin_texts(http, sidecar, saga_id)

    sent = repr(recorder[0].calls) + repr([c.body for c in recorder[0].calls])
    for name in ("card", "cvv", "pin", "password", "direct-key"):
        assert c[name] in sent, f"{name} never reached the service: the test proves nothing"
    places = {
        "log": sidecar.log_text(),
        "database": await every_row(schema),
        "redis": (await every_redis_byte(redis_url, prefix)).decode("latin-1"),
        "admin": shown,
    }
    for place, text in places.items():
        for name, canary in c.items():
            assert canary not in text, f"the {name} secret is in the {place}"
