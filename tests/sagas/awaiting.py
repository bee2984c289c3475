"""Helpers of the tests of steps that await a callback: the saga, the token, the callback.

``awaiting_saga()`` is the order saga in async mode whose ``charge`` awaits a callback: its
action only starts the charge; ``steps.charge.body`` becomes the callback's ``result``.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp

from saga_runner.records import SagaStep
from saga_runner.states import StepStatus
from sagas.harness import ORDER, SidecarHarness, order_saga, with_step

CALLBACKS_PATH = "/_saga/callbacks"


def awaiting_saga(timeout: str = "1h", **overrides: Any) -> dict[str, Any]:
    """The order saga, async, its ``charge`` awaiting a callback for ``timeout``."""
    saga = order_saga(mode="async", **overrides)
    return with_step(saga, "charge", **{"await": {"callback": {"timeout": timeout}}})


def token_of(header: str) -> str:
    """The token at the end of a ``Saga-Callback`` URL."""
    return header.rsplit("/", 1)[1]


async def charge_token(sidecar: SidecarHarness, call: int = 0) -> str:
    """The token the ``call``-th charge call carried (waiting for that call to arrive)."""
    await sidecar.services.wait_for_calls(call + 1, service="payments")
    return token_of(sidecar.services.calls_to("payments")[call].headers["saga-callback"])


async def call_back(
    client: aiohttp.ClientSession,
    sidecar: SidecarHarness,
    token: str,
    body: Any = None,
    *,
    data: bytes | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Send a callback for ``token``: status, headers and the JSON body of the answer."""
    sent = io.BytesIO(data if data is not None else json.dumps(body).encode())
    url = f"{sidecar.url}{CALLBACKS_PATH}/{token}"
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    async with client.request(method, url, data=sent, headers=all_headers) as response:
        raw = await response.read()
        return response.status, dict(response.headers), json.loads(raw) if raw else None


async def start_order(
    sidecar: SidecarHarness, client: aiohttp.ClientSession, order_no: str = "A-1"
) -> str:
    """Start the (async) order saga; its id."""
    status, _, body = await sidecar.post(client, "/api/orders", {**ORDER, "order_no": order_no})
    assert status == 202, body
    saga_id: str = body["saga_id"]
    return saga_id


async def waiting_charge(sidecar: SidecarHarness, client: aiohttp.ClientSession) -> tuple[str, str]:
    """Start the order saga and wait until its charge waits: the saga's id and the token."""
    saga_id = await start_order(sidecar, client)
    token = await charge_token(sidecar)
    await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    return saga_id, token


async def step_in(
    sidecar: SidecarHarness, saga_id: str, name: str, status: StepStatus, within: float = 5.0
) -> SagaStep:
    """Poll the store until step ``name`` of the saga is in ``status``; return it."""
    async with asyncio.timeout(within):
        while True:
            detail = await sidecar.runtime.store.get(saga_id)
            step = next(s for s in detail.steps if s.step_name == name)
            if step.status is status:
                return step
            await asyncio.sleep(0.02)
