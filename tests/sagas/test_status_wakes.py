"""A held status request (``Prefer: wait=N``) answers as soon as any run of this replica ends
the saga: not only the trigger's own run, but a run resumed by a callback or by an operator.

In-process sidecars on real sockets, both saga stores; the saga's ``charge`` awaits a callback,
so the saga is parked (no run holds it) while the status request waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from proxy.keys import SAGAS
from sagas.awaiting import awaiting_saga, call_back, waiting_charge
from sagas.conftest import SidecarFactory
from sagas.harness import SidecarHarness

STATUS_PATH = "/_saga/sagas"
WOKEN_WITHIN = 0.3
"""Seconds from the action that ends the saga to the held answer (the re-read is every 1 s)."""


async def hold(
    client: aiohttp.ClientSession, sidecar: SidecarHarness, saga_id: str
) -> asyncio.Task[tuple[int, Any]]:
    """GET the saga's status URL with ``Prefer: wait=10``, returned once the request is held."""

    async def get() -> tuple[int, Any]:
        url = f"{sidecar.url}{STATUS_PATH}/{saga_id}"
        async with client.get(url, headers={"Prefer": "wait=10"}) as response:
            return response.status, await response.json()

    waiting = asyncio.create_task(get())
    watch = sidecar.public[SAGAS].watch
    async with asyncio.timeout(5):
        while True:
            if watch.waiting():
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # past the request's first read: it now waits for a wake-up
    assert not waiting.done()
    return waiting


async def answer_held_across(
    client: aiohttp.ClientSession,
    sidecar: SidecarHarness,
    saga_id: str,
    end_it: Callable[[], Awaitable[None]],
) -> tuple[Any, float]:
    """Hold a status request for the saga, then ``end_it``: the held answer and the seconds it
    came after ``end_it`` began."""
    waiting = await hold(client, sidecar, saga_id)
    began = time.monotonic()
    await end_it()
    status, body = await waiting
    assert status == 200, body
    return body, time.monotonic() - began


async def test_a_saga_a_callback_completes_answers_the_held_request_at_once(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, token = await waiting_charge(sidecar, client)

    async def succeed() -> None:
        status, _, body = await call_back(
            client, sidecar, token, {"outcome": "success", "result": 1}
        )
        assert status == 202, body

    body, elapsed = await answer_held_across(client, sidecar, saga_id, succeed)

    assert body["saga_status"] == "completed", body
    assert body["response"]["body"]["charge"] == 1
    assert elapsed < WOKEN_WITHIN, elapsed


async def test_a_saga_an_operator_aborts_answers_the_held_request_at_once(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga())
    saga_id, _ = await waiting_charge(sidecar, client)

    async def abort() -> None:
        async with client.post(f"{sidecar.admin_url}/sagas/{saga_id}/abort", json={}) as response:
            assert response.status == 202, await response.text()

    body, elapsed = await answer_held_across(client, sidecar, saga_id, abort)

    assert body["saga_status"] == "compensated", body
    assert body["response"]["detail"].startswith("aborted by"), body
    assert elapsed < WOKEN_WITHIN, elapsed
