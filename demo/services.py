"""Demo services: a small "shop" app (the sidecar's upstream) plus orders and payments services.

Everything lives in memory. ``POST /charges`` on the shop app simulates a non-idempotent payment
(every execution creates a new charge, so a double charge is visible in ``GET /charges``); a
``"delay": N`` member makes it take N seconds (at most 30), so a duplicate sent meanwhile can be
seen refused with 409. The orders and payments services are the targets of the example sagas:
a payment whose amount is above 1000 is declined (402), which makes the payment saga compensate;
a payout to the IBAN ``INVALID`` is refused (422), which makes the withdrawal saga compensate;
``PUT /refunds/outage`` on the payments service makes refunds fail (503) until
``DELETE /refunds/outage``, so a compensation runs out of attempts and its saga ends ``failed``
for an operator to retry.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from aiohttp import web

_ids = itertools.count(1)
MAX_DELAY = 30.0


def _next_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def shop_app() -> web.Application:
    """The app behind the sidecar: charges that are executed once per call."""
    charges: list[dict[str, Any]] = []

    async def create_charge(request: web.Request) -> web.Response:
        body = await _json_body(request)
        delay = body.get("delay")
        if isinstance(delay, int | float) and not isinstance(delay, bool):
            await asyncio.sleep(min(max(float(delay), 0.0), MAX_DELAY))
        charge = {"id": _next_id("ch"), "amount": body.get("amount"), "status": "succeeded"}
        charges.append(charge)
        return web.json_response(charge, status=201)

    async def list_charges(request: web.Request) -> web.Response:
        return web.json_response({"count": len(charges), "charges": charges})

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"service": "shop", "path": request.path_qs})

    app = web.Application()
    app.router.add_post("/charges", create_charge)
    app.router.add_get("/charges", list_charges)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def orders_app() -> web.Application:
    """Orders service: create and cancel orders."""
    orders: dict[str, dict[str, Any]] = {}

    async def create(request: web.Request) -> web.Response:
        body = await _json_body(request)
        order = {
            "id": _next_id("ord"),
            "order_no": body.get("order_no"),
            "amount": body.get("amount"),
            "status": "created",
        }
        orders[order["id"]] = order
        return web.json_response(order, status=201)

    async def cancel(request: web.Request) -> web.Response:
        order = orders.get(request.match_info["id"])
        if order is None:
            raise web.HTTPNotFound()
        order["status"] = "cancelled"
        return web.json_response(order)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(list(orders.values()))

    app = web.Application()
    app.router.add_post("/orders", create)
    app.router.add_get("/orders", listing)
    app.router.add_delete("/orders/{id}", cancel)
    return app


def payments_app(decline_above: float = 1000) -> web.Application:
    """Payments service: charge (declined above a limit), refund (failing during an outage), and
    payouts (refused to the IBAN ``INVALID``)."""
    payments: dict[str, dict[str, Any]] = {}
    payouts: list[dict[str, Any]] = []
    refunds = {"outage": False}

    async def charge(request: web.Request) -> web.Response:
        body = await _json_body(request)
        amount = float(body.get("amount") or 0)
        if amount > decline_above:
            return web.json_response({"error": "card declined", "amount": amount}, status=402)
        payment = {
            "id": _next_id("pay"),
            "order_id": body.get("order_id"),
            "amount": amount,
            "status": "captured",
        }
        payments[payment["id"]] = payment
        return web.json_response(payment, status=201)

    async def refund(request: web.Request) -> web.Response:
        if refunds["outage"]:
            return web.json_response({"error": "refunds are down"}, status=503)
        payment = payments.get(request.match_info["id"])
        if payment is None:
            raise web.HTTPNotFound()
        payment["status"] = "refunded"
        return web.json_response(payment)

    async def payout(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body.get("iban") == "INVALID":
            return web.json_response({"error": "invalid IBAN"}, status=422)
        sent = {"id": _next_id("po"), "payment_id": body.get("payment_id"), "iban": body["iban"]}
        payouts.append(sent)
        return web.json_response(sent, status=201)

    async def outage(request: web.Request) -> web.Response:
        refunds["outage"] = request.method == "PUT"
        return web.json_response({"refunds_outage": refunds["outage"]})

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(list(payments.values()))

    app = web.Application()
    app.router.add_post("/payments", charge)
    app.router.add_get("/payments", listing)
    app.router.add_post("/payments/{id}/refund", refund)
    app.router.add_post("/payouts", payout)
    app.router.add_put("/refunds/outage", outage)
    app.router.add_delete("/refunds/outage", outage)
    return app
