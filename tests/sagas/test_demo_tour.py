"""The README's tour on the bundled demo: a 409 seen with two curls, and the failed-saga runbook.

A real ``saga-sidecar serve`` runs the shipped ``config/sidecar.yaml`` and saga files in front of
the demo services (as in ``test_sidecar_process``). The tour's steps are the README's: a slow
charge and its duplicate (409, then a replay once the first finished); a withdrawal whose payout
is refused while refunds are down (the saga ends ``failed``), then, refunds back, an operator
retry through the admin API and through the CLI that compensates it; the checkout (a parallel
group) and the TCC transfer, completed and undone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
from conftest import REPO_ROOT, Sidecar, Upstream

from sagas.harness import Database
from sagas.test_sidecar_process import demo_services, send, shipped_config

WITHDRAWALS = "/api/v1/withdrawals"
CHECKOUTS = "/api/v1/checkouts"
TRANSFERS = "/api/v1/transfers"
JSON = {"Content-Type": "application/json"}


def start_demo(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> tuple[Sidecar, Upstream]:
    """The demo services and a sidecar in front of them; returns the sidecar and payments."""
    sidecar, payments, _ = start_demo_with_orders(sidecar_process, app_in_thread, database)
    return sidecar, payments


def start_demo_with_orders(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> tuple[Sidecar, Upstream, Upstream]:
    """The demo services and a sidecar in front of them; returns the sidecar, payments and
    orders."""
    demo = demo_services()
    shop, orders, payments = (
        app_in_thread(app()) for app in (demo.shop_app, demo.orders_app, demo.payments_app)
    )
    sidecar = sidecar_process(
        shipped_config(),
        env={
            "UPSTREAM_URL": shop.url,
            "ORDERS_URL": orders.url,
            "PAYMENTS_URL": payments.url,
            "SAGA_STORE": database.url,
        },
    )
    return sidecar, payments, orders


async def test_a_duplicate_of_a_slow_charge_gets_409_then_the_replay(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
    sidecar, _ = start_demo(sidecar_process, app_in_thread, database)
    charge = {"amount": 42, "delay": 2}
    async with aiohttp.ClientSession() as client:
        first = asyncio.create_task(send(client, sidecar.url + "/charges", charge, "slow-1"))
        await asyncio.sleep(0.5)
        async with client.post(
            sidecar.url + "/charges", json=charge, headers={"Idempotency-Key": "slow-1"}
        ) as duplicate:
            assert duplicate.status == 409
            assert duplicate.headers["Retry-After"] == "1"
            assert duplicate.content_type == "application/problem+json"
        status, _, created = await first
        assert status == 201
        replay = await send(client, sidecar.url + "/charges", charge, "slow-1")
        async with client.get(sidecar.url + "/charges") as response:
            charges = await response.json()

    assert replay[0] == 201 and replay[2] == created
    assert replay[1]["Idempotent-Replayed"] == "true"
    assert charges["count"] == 1


async def wait_for_status(client: aiohttp.ClientSession, url: str, status: str) -> dict[str, Any]:
    """Poll the admin API until the saga has ``status`` (10 s at most)."""
    saga: dict[str, Any] = {}
    for _ in range(100):
        async with client.get(url) as response:
            saga = await response.json()
        if saga["status"] == status:
            return saga
        await asyncio.sleep(0.1)
    raise AssertionError(f"saga still {saga.get('status')}, expected {status}: {saga}")


async def fail_a_withdrawal(
    client: aiohttp.ClientSession, sidecar: Sidecar, payments: Upstream, key: str
) -> str:
    """Refunds down, a payout to an invalid IBAN: the saga ends ``failed``; returns its id."""
    async with client.put(payments.url + "/refunds/outage") as response:
        assert response.status == 200
    body = {"account": "acc-1", "amount": 50, "iban": "INVALID"}
    status, headers, problem = await send(client, sidecar.url + WITHDRAWALS, body, key)
    assert status == 422, problem
    assert problem["saga_status"] == "failed"
    assert problem["failed_step"] == "payout"
    async with client.get(sidecar.admin_url + "/sagas?status=failed") as response:
        listed = [saga["id"] for saga in (await response.json())["items"]]
    assert headers["Saga-Id"] in listed
    async with client.delete(payments.url + "/refunds/outage") as response:
        assert response.status == 200
    return headers["Saga-Id"]


async def test_a_failed_saga_is_compensated_by_an_operator_retry_from_the_api(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
    sidecar, payments = start_demo(sidecar_process, app_in_thread, database)
    async with aiohttp.ClientSession() as client:
        saga_id = await fail_a_withdrawal(client, sidecar, payments, "wd-api")
        async with client.post(
            f"{sidecar.admin_url}/sagas/{saga_id}/retry", json={}, headers=JSON
        ) as response:
            assert response.status in (200, 202), await response.text()
        saga = await wait_for_status(client, f"{sidecar.admin_url}/sagas/{saga_id}", "compensated")
        async with client.get(payments.url + "/payments") as response:
            refunded = [p for p in await response.json() if p["order_id"] == "acc-1"]

    assert [step["status"] for step in saga["steps"]] == ["compensated", "failed"]
    assert [p["status"] for p in refunded] == ["refunded"]


async def test_a_failed_saga_is_compensated_by_an_operator_retry_from_the_cli(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
    sidecar, payments = start_demo(sidecar_process, app_in_thread, database)
    async with aiohttp.ClientSession() as client:
        saga_id = await fail_a_withdrawal(client, sidecar, payments, "wd-cli")
        config = str(sidecar.config_path)
        retried = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "proxy", "sagas", "retry", saga_id, "--config", config],
            cwd=REPO_ROOT,
            env={**os.environ, "SAGA_STORE": database.url, "PAYMENTS_URL": payments.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retried.returncode == 0, retried.stderr
        await wait_for_status(client, f"{sidecar.admin_url}/sagas/{saga_id}", "compensated")


async def test_the_checkout_group_and_the_tcc_transfer_of_the_tour(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
    sidecar, payments, orders = start_demo_with_orders(sidecar_process, app_in_thread, database)
    checkout = {"order_no": "C-1", "sku": "book", "amount": 30, "coupon": "WELCOME"}
    expired = {"order_no": "C-2", "sku": "book", "amount": 30, "coupon": "EXPIRED"}
    async with aiohttp.ClientSession() as client:
        paid = await send(client, sidecar.url + CHECKOUTS, checkout, None)
        refused = await send(client, sidecar.url + CHECKOUTS, expired, None)
        async with client.get(f"{sidecar.admin_url}/sagas/{refused[1]['Saga-Id']}") as response:
            undone = await response.json()
        moved = await send(client, sidecar.url + TRANSFERS, transfer("acc-2", 25), None)
        closed = await send(client, sidecar.url + TRANSFERS, transfer("acc-closed", 25), None)
        async with client.get(f"{sidecar.admin_url}/sagas/{closed[1]['Saga-Id']}") as response:
            cancelled = await response.json()
        async with client.get(payments.url + "/accounts") as response:
            accounts = await response.json()
        async with client.get(orders.url + "/stock") as response:
            stock = await response.json()

    assert paid[0] == 201, paid
    assert set(paid[2]) == {"stock", "coupon", "fraud", "payment"}
    assert refused[0] == 422 and refused[2]["failed_step"] == "apply_coupon", refused
    assert refused[2]["saga_status"] == "compensated"
    assert undone["stages"][0] == {
        "stage": 0,
        "parallel": True,
        "steps": ["reserve_stock", "apply_coupon", "fraud_check"],
    }
    assert [(s["name"], s["status"]) for s in undone["steps"]] == [
        ("reserve_stock", "compensated"),
        ("apply_coupon", "failed"),
        ("fraud_check", "compensated"),
        ("charge", "pending"),
    ]
    assert [(r["order_no"], r["status"]) for r in stock] == [
        ("C-1", "reserved"),
        ("C-2", "released"),
    ]
    assert moved[0] == 201, moved
    assert closed[0] == 422 and closed[2]["failed_step"] == "credit", closed
    assert (cancelled["kind"], cancelled["phase"], cancelled["status"]) == (
        "tcc",
        "cancel",
        "compensated",
    )
    cancels = sorted(
        (a["started_at"], s["name"])
        for s in cancelled["steps"]
        for a in s["attempts"]
        if a["kind"] == "cancel"
    )
    assert [name for _, name in cancels] == ["credit", "debit"], "newest first"
    assert accounts["balances"] == {"acc-1": 475, "acc-2": 125}
    held = {(h["account"], h["status"]) for h in accounts["holds"]}
    assert held == {
        ("acc-1", "confirmed"),
        ("acc-2", "confirmed"),
        ("acc-1", "cancelled"),
        ("acc-closed", "cancelled"),
    }


def transfer(to: str, amount: int) -> dict[str, Any]:
    """A transfer from ``acc-1``, as the README's tour sends it."""
    return {"from": "acc-1", "to": to, "amount": amount}
