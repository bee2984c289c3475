"""The shipped payment saga through a real ``saga-sidecar serve`` subprocess and real sockets.

The sidecar runs the repository's ``config/sidecar.yaml`` (its ``${VAR}`` defaults pointed at
this test's ports and saga database) and ``config/sagas/payment.yaml``, in front of the bundled
demo services (``demo.services``), on each saga store.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiohttp
import yaml
from conftest import REPO_ROOT, Sidecar, Upstream

from sagas.harness import Database

PAYMENTS = "/api/v1/payments"


def demo_services() -> ModuleType:
    """``demo/services.py`` (the demo package is not installed, only shipped in the repo)."""
    return demo_module("services")


def demo_module(name: str) -> ModuleType:
    """``demo.<name>`` (``services``, ``gateway``), imported from the repository's ``demo``
    package, which is shipped in the repo but not installed."""
    if "demo" not in sys.modules:
        package = REPO_ROOT / "demo"
        spec = importlib.util.spec_from_file_location(
            "demo", package / "__init__.py", submodule_search_locations=[str(package)]
        )
        assert spec is not None and spec.loader is not None
        sys.modules["demo"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["demo"])
    return importlib.import_module(f"demo.{name}")


def shipped_config() -> dict[str, Any]:
    """``config/sidecar.yaml`` as written (``${VAR}`` left for the sidecar to substitute).

    The listeners and log format come from the launcher (fresh ports, JSON logs) and the saga
    files are named by absolute path, since the config is written to another directory.
    """
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config/sidecar.yaml").read_text())
    for key in ("listen", "admin", "log"):
        config.pop(key)
    config["sagas"]["definitions"] = [str(REPO_ROOT / "config/sagas/*.yaml")]
    return config


async def send(
    client: aiohttp.ClientSession, url: str, body: Any, key: str | None
) -> tuple[int, dict[str, str], Any]:
    """POST JSON; return status, headers and the parsed body."""
    headers = {"Idempotency-Key": key} if key else {}
    async with client.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), json.loads(await response.read())


async def test_the_payment_saga_charges_or_compensates_through_a_real_sidecar(
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
    database: Database,
) -> None:
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
    url = sidecar.url + PAYMENTS
    async with aiohttp.ClientSession() as client:
        paid = await send(client, url, {"order_no": "A-1", "amount": 42.5}, "pay-1")
        replay = await send(client, url, {"order_no": "A-1", "amount": 42.5}, "pay-1")
        declined = await send(client, url, {"order_no": "B-2", "amount": 5000}, "pay-2")
        keyless = await send(client, url, {"order_no": "C-3", "amount": 1}, None)
        async with client.get(orders.url + "/orders") as response:
            orders_after = {o["order_no"]: o for o in await response.json()}
        async with client.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()

    status, headers, body = paid
    assert status == 201, sidecar.log_text()
    assert body["order"] == {**orders_after["A-1"], "status": "created"}
    assert body["payment"]["order_id"] == body["order"]["id"]
    assert body["payment"]["status"] == "captured" and body["payment"]["amount"] == 42.5
    assert replay[0] == 201 and replay[2] == body
    assert replay[1]["Idempotent-Replayed"] == "true"
    assert replay[1]["Saga-Id"] == headers["Saga-Id"]

    status, headers, problem = declined
    assert status == 402
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["saga_status"] == "compensated" and problem["failed_step"] == "charge"
    assert problem["saga_id"] == headers["Saga-Id"]
    assert orders_after["B-2"]["status"] == "cancelled"

    assert keyless[0] == 400, "the shipped config requires a key on the payments route"
    assert "C-3" not in orders_after
    assert 'saga_started_total{saga="payment"} 2.0' in metrics
    assert 'saga_completed_total{saga="payment"} 1.0' in metrics
    assert 'saga_compensated_total{saga="payment"} 1.0' in metrics
    assert await database.count("saga_instances") == 2
