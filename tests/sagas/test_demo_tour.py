"""The README's tour on the bundled demo: a 409 seen with two curls, and the failed-saga runbook.

A real ``saga-sidecar serve`` runs the shipped ``config/sidecar.yaml`` and saga files in front of
the demo services (as in ``test_sidecar_process``). The tour's steps are the README's: a slow
charge and its duplicate (409, then a replay once the first finished); a withdrawal whose payout
is refused while refunds are down (the saga ends ``failed``), then, refunds back, an operator
retry through the admin API and through the CLI that compensates it; the checkout (a parallel
group) and the TCC transfer, completed and undone; the long-running card payment, whose gateway
answers 202 and calls back later, followed on its status URL to completed or, declined,
compensated.
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
from sagas.test_sidecar_process import demo_module, demo_services, send, shipped_config

WITHDRAWALS = "/api/v1/withdrawals"
CHECKOUTS = "/api/v1/checkouts"
TRANSFERS = "/api/v1/transfers"
CARD_PAYMENTS = "/api/v1/card-payments"
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
    sidecar, services = start_demo_services(sidecar_process, app_in_thread, database)
    return sidecar, services["payments"], services["orders"]


def start_demo_services(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> tuple[Sidecar, dict[str, Upstream]]:
    """The four demo services (the gateway as ``make run`` starts it) and a sidecar in front of
    them; returns the sidecar and the services by name (``shop``, ``orders``, ``payments``,
    ``gateway``)."""
    demo = demo_services()
    apps = {
        "shop": demo.shop_app(),
        "orders": demo.orders_app(),
        "payments": demo.payments_app(),
        "gateway": demo_module("gateway").gateway_app(),
    }
    services = {name: app_in_thread(app) for name, app in apps.items()}
    sidecar = sidecar_process(
        shipped_config(),
        env={
            "UPSTREAM_URL": services["shop"].url,
            "ORDERS_URL": services["orders"].url,
            "PAYMENTS_URL": services["payments"].url,
            "GATEWAY_URL": services["gateway"].url,
            "SAGA_STORE": database.url,
        },
    )
    return sidecar, services


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


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    """``GET`` ``url``; its JSON body."""
    async with client.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def follow(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], Any]:
    """``GET`` a status URL with ``Prefer: wait=10``, as the README's tour does."""
    async with client.get(url, headers={"Prefer": "wait=10"}) as response:
        return response.status, dict(response.headers), await response.json()


async def test_the_card_payment_waits_for_the_gateways_callback_then_completes_or_compensates(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
    sidecar, services = start_demo_services(sidecar_process, app_in_thread, database)
    gateway, orders = services["gateway"], services["orders"]
    async with aiohttp.ClientSession() as client:
        accepted = await send(client, sidecar.url + CARD_PAYMENTS, card("L-1", 80), "card-1")
        refused = await send(client, sidecar.url + CARD_PAYMENTS, card("L-2", 5000), "card-2")
        paid = await follow(client, sidecar.url + accepted[1]["Location"])
        declined = await follow(client, sidecar.url + refused[1]["Location"])
        done = await get_json(client, f"{sidecar.admin_url}/sagas/{accepted[1]['Saga-Id']}")
        undone = await get_json(client, f"{sidecar.admin_url}/sagas/{refused[1]['Saga-Id']}")
        charges = {c["order_id"]: c for c in await get_json(client, gateway.url + "/charges")}
        settlements = await get_json(client, gateway.url + "/settlements")
        orders_after = {o["order_no"]: o for o in await get_json(client, orders.url + "/orders")}

    for status, headers, body in (accepted, refused):
        assert status == 202, body
        assert headers["Location"] == f"/_saga/sagas/{headers['Saga-Id']}"
        assert body == {"saga_id": headers["Saga-Id"], "saga_status": "running"}

    status, headers, outcome = paid
    assert (status, headers["Preference-Applied"]) == (200, "wait=10")
    assert outcome["saga_status"] == "completed", sidecar.log_text()
    body = outcome["response"]["body"]
    assert outcome["response"]["status"] == 201
    assert body["order"] == {**orders_after["L-1"], "status": "created"}
    assert body["charge"]["status"] == "captured" and body["charge"]["capture"]
    assert body["settlement"] == {**settlements[0], "state": "settled"}
    assert [(s["name"], s["await"] and s["await"]["kind"]) for s in done["steps"]] == [
        ("create_order", None),
        ("charge", "callback"),
        ("settle", "poll"),
    ]
    assert [s["await"]["outcome"] for s in done["steps"][1:]] == ["success", "success"]
    charged = done["steps"][1]
    assert [a["status_code"] for a in charged["attempts"]] == [202], "accepted, once..."
    assert charged["await"]["result"] == body["charge"], "...captured by its callback"
    assert charged["await"]["waiting_since"] is not None

    assert declined[2]["saga_status"] == "compensated", sidecar.log_text()
    problem = declined[2]["response"]
    assert problem["type"] == "urn:saga-sidecar:problem:saga-compensated"
    assert (problem["failed_step"], problem["detail"]) == (
        "charge",
        "step charge: the service reported failure",
    )
    charge_step = undone["steps"][1]
    assert charge_step["await"]["outcome"] == "failure"
    assert charge_step["await"]["result"]["error"] == "card declined"
    assert [s["status"] for s in undone["steps"]] == ["compensated", "compensated", "pending"]
    assert orders_after["L-2"]["status"] == "cancelled"

    order_ids = (body["order"]["id"], orders_after["L-2"]["id"])
    assert [(charges[o]["status"], charges[o]["callback_status"]) for o in order_ids] == [
        ("captured", 202),
        ("declined", 202),
    ], "each callback taken by the sidecar at once"
    assert [s["charge_id"] for s in settlements] == [body["charge"]["id"]]


def card(order_no: str, amount: int) -> dict[str, Any]:
    """A card payment, as the README's tour sends it."""
    return {"order_no": order_no, "amount": amount}
