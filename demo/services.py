"""Demo services: a small "shop" app (the sidecar's upstream) plus orders and payments services.

Everything lives in memory. ``POST /charges`` on the shop app simulates a non-idempotent payment
(every execution creates a new charge, so a double charge is visible in ``GET /charges``).
The orders and payments services are the targets of the example payment saga; a payment whose
amount is above 1000 is declined (402), which makes the saga compensate.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


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
    """Payments service: charge (declined above a limit) and refund."""
    payments: dict[str, dict[str, Any]] = {}

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
        payment = payments.get(request.match_info["id"])
        if payment is None:
            raise web.HTTPNotFound()
        payment["status"] = "refunded"
        return web.json_response(payment)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(list(payments.values()))

    app = web.Application()
    app.router.add_post("/payments", charge)
    app.router.add_get("/payments", listing)
    app.router.add_post("/payments/{id}/refund", refund)
    return app
