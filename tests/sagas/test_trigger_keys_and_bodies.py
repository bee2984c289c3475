"""A saga trigger scopes keys and reads bodies exactly as the proxy does (one scoper, one reader).

In-process sidecar on real sockets, both saga stores.
"""

from __future__ import annotations

import json

import aiohttp
from multidict import CIMultiDict

from proxy.idempotency import IDEMPOTENCY_GUARD
from proxy.idempotency.store import Completed, new_token
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER, PROBLEM, Database

OFF = {"routes": [{"path": "/api/orders", "enabled": False}]}


def tenant(key: str, *authorization: str) -> CIMultiDict[str]:
    """Request headers: the key and one ``Authorization`` field line per value."""
    headers = CIMultiDict([("Idempotency-Key", key), ("Content-Type", "application/json")])
    for value in authorization:
        headers.add("Authorization", value)
    return headers


async def test_the_trigger_stores_its_saga_under_the_key_the_proxy_stores_its_answer_under(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()
    headers = tenant("order-A-1", "Bearer a", "Bearer b")

    async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=headers) as response:
        assert response.status == 201, await response.text()

    saga = (await sidecar.only_saga()).instance
    assert saga.idempotency_key is not None
    store = sidecar.public[IDEMPOTENCY_GUARD].store
    found = await store.acquire(saga.idempotency_key, "another request", new_token(), 1.0)
    assert isinstance(found, Completed)


async def test_every_value_of_a_repeated_scope_header_scopes_the_trigger_key(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(idempotency=OFF)

    for second in ("Bearer alice", "Bearer bob"):
        headers = tenant("k", "Bearer shared", second)
        async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=headers) as reply:
            assert reply.status == 201, await reply.text()

    assert await database.count("saga_instances") == 2


async def test_a_trigger_body_over_the_limit_gets_the_same_413_as_a_forwarded_one(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        idempotency={"max_request_body": "1KiB", **OFF},
        limits={"max_request_body": "1KiB"},
        sagas={"max_input": "1KiB"},
    )
    body = json.dumps({"x": "a" * 2048}).encode()

    answers = []
    for path in ("/api/orders", "/not-a-trigger"):
        async with client.post(sidecar.url + path, data=body) as response:
            answers.append((response.status, response.content_type, await response.json()))
            assert response.headers.get("Connection") == "close"

    assert answers[0] == answers[1]
    assert answers[0][:2] == (413, PROBLEM)
    assert answers[0][2]["detail"] == "request body exceeds the limit of 1024 bytes"
    assert await database.count("saga_instances") == 0


async def test_a_trigger_key_still_finds_its_saga_after_a_restart_on_the_memory_store(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    before, after = await make_sidecar(), await make_sidecar()  # two processes, one saga store
    answers = []
    for sidecar in (before, after):
        headers = tenant("order-A-1", "Bearer a")
        async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=headers) as reply:
            answers.append((reply.status, reply.headers["Saga-Id"]))

    assert answers[0] == answers[1]
    assert await database.count("saga_instances") == 1


async def test_a_keyed_trigger_needs_the_store_secret_only_without_key_secret(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    down = {"store": "redis://127.0.0.1:1/0", **OFF}
    without, with_secret = (
        await make_sidecar(idempotency=down),
        await make_sidecar(idempotency={**down, "key_secret": "s3cret"}),
    )
    replies = []
    for sidecar in (without, with_secret):
        headers = tenant("order-A-1", "Bearer a")
        async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=headers) as reply:
            replies.append((reply.status, reply.content_type, await reply.text()))

    assert replies[0][:2] == (503, PROBLEM)
    assert "idempotency store" in replies[0][2]
    assert replies[1][0] == 201
    assert await database.count("saga_instances") == 1
