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

The checkout saga (a parallel group) reserves stock and redeems a coupon on the orders service
and runs a fraud check on the payments service; the coupon ``EXPIRED`` is refused (422), so the
group's other members are undone. The transfer saga (TCC) holds money on two accounts of the
payments service (``acc-1`` starts with 500, ``acc-2`` with 100; ``acc-closed`` refuses every
hold with 422) and then confirms or cancels the holds. An account honours the two TCC rules: a
cancel of a hold it never saw succeeds and is remembered, and a hold tried after its cancel is
refused (409). ``GET /stock``, ``GET /coupons`` and ``GET /accounts`` show the state.

The payment gateway that answers later (callbacks, polled settlements) is ``demo/gateway.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from aiohttp import web

_ids = itertools.count(1)
MAX_DELAY = 30.0


def next_id(prefix: str) -> str:
    """A new demo id, ``<prefix>_<n>`` (one counter for every demo service)."""
    return f"{prefix}_{next(_ids)}"


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or 400."""
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
        body = await json_body(request)
        delay = body.get("delay")
        if isinstance(delay, int | float) and not isinstance(delay, bool):
            await asyncio.sleep(min(max(float(delay), 0.0), MAX_DELAY))
        charge = {"id": next_id("ch"), "amount": body.get("amount"), "status": "succeeded"}
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
        body = await json_body(request)
        order = {
            "id": next_id("ord"),
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
    _add_stock_and_coupons(app)
    return app


def _add_stock_and_coupons(app: web.Application) -> None:
    """Stock reservations and coupon redemptions (the checkout saga's group members)."""
    reservations: dict[str, dict[str, Any]] = {}
    redemptions: dict[str, dict[str, Any]] = {}

    async def reserve(request: web.Request) -> web.Response:
        body = await json_body(request)
        held = {"id": next_id("rsv"), "order_no": body.get("order_no"), "sku": body.get("sku")}
        reservations[held["id"]] = {**held, "status": "reserved"}
        return web.json_response(reservations[held["id"]], status=201)

    async def redeem(request: web.Request) -> web.Response:
        body = await json_body(request)
        if body.get("code") == "EXPIRED":
            return web.json_response({"error": "coupon expired", "code": "EXPIRED"}, status=422)
        used = {"id": next_id("cpn"), "order_no": body.get("order_no"), "code": body.get("code")}
        redemptions[used["id"]] = {**used, "status": "redeemed"}
        return web.json_response(redemptions[used["id"]], status=201)

    def undo(records: dict[str, dict[str, Any]], status: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            record = records.get(request.match_info["id"])
            if record is None:
                raise web.HTTPNotFound()
            record["status"] = status
            return web.json_response(record)

        return handler

    def listing(records: dict[str, dict[str, Any]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(list(records.values()))

        return handler

    app.router.add_post("/stock/reservations", reserve)
    app.router.add_delete("/stock/reservations/{id}", undo(reservations, "released"))
    app.router.add_get("/stock", listing(reservations))
    app.router.add_post("/coupons/redemptions", redeem)
    app.router.add_delete("/coupons/redemptions/{id}", undo(redemptions, "restored"))
    app.router.add_get("/coupons", listing(redemptions))


def payments_app(decline_above: float = 1000) -> web.Application:
    """Payments service: charge (declined above a limit), refund (failing during an outage), and
    payouts (refused to the IBAN ``INVALID``)."""
    payments: dict[str, dict[str, Any]] = {}
    payouts: list[dict[str, Any]] = []
    refunds = {"outage": False}

    async def charge(request: web.Request) -> web.Response:
        body = await json_body(request)
        amount = float(body.get("amount") or 0)
        if amount > decline_above:
            return web.json_response({"error": "card declined", "amount": amount}, status=402)
        payment = {
            "id": next_id("pay"),
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
        body = await json_body(request)
        if body.get("iban") == "INVALID":
            return web.json_response({"error": "invalid IBAN"}, status=422)
        sent = {"id": next_id("po"), "payment_id": body.get("payment_id"), "iban": body["iban"]}
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
    app.router.add_post("/fraud-checks", fraud_check)
    Accounts({"acc-1": 500, "acc-2": 100}, closed={"acc-closed"}).add_routes(app)
    return app


async def fraud_check(request: web.Request) -> web.Response:
    """A fraud check (the checkout saga's third member): every order passes."""
    body = await json_body(request)
    return web.json_response(
        {"id": next_id("chk"), "order_no": body.get("order_no"), "verdict": "pass"}, status=201
    )


class Accounts:
    """Accounts with TCC holds (the transfer saga): ``PUT /accounts/{acc}/holds/{hold}`` tries
    (``{"amount": N, "side": "debit"|"credit"}``), ``POST …/confirm`` confirms, ``DELETE`` cancels.

    A debit hold needs the available balance (balance minus other debit holds); a closed account
    refuses every hold (422). A cancel of an unknown hold succeeds and leaves a ``cancelled``
    record, so a try arriving after its cancel is refused (409) instead of holding money that
    nobody would ever release.
    """

    def __init__(self, balances: dict[str, float], closed: set[str]) -> None:
        self.balances = dict(balances)
        self.closed = closed
        self.holds: dict[tuple[str, str], dict[str, Any]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Serve the accounts on ``app``."""
        app.router.add_get("/accounts", self.listing)
        app.router.add_put("/accounts/{account}/holds/{hold}", self.hold)
        app.router.add_post("/accounts/{account}/holds/{hold}/confirm", self.confirm)
        app.router.add_delete("/accounts/{account}/holds/{hold}", self.cancel)

    def _available(self, account: str) -> float:
        held = sum(
            h["amount"]
            for (acc, _), h in self.holds.items()
            if acc == account and h["side"] == "debit" and h["status"] == "held"
        )
        return self.balances.get(account, 0) - held

    async def hold(self, request: web.Request) -> web.Response:
        account, hold_id = request.match_info["account"], request.match_info["hold"]
        body = await json_body(request)
        amount, side = body.get("amount"), body.get("side")
        if not isinstance(amount, int | float) or amount <= 0 or side not in ("debit", "credit"):
            raise web.HTTPBadRequest(text="need a positive amount and side debit or credit")
        known = self.holds.get((account, hold_id))
        if known is not None:
            status = 200 if known["status"] == "held" else 409  # cancelled: a try after it
            return web.json_response(known, status=status)
        if account in self.closed or account not in self.balances:
            return web.json_response({"error": "account closed", "account": account}, status=422)
        if side == "debit" and amount > self._available(account):
            return web.json_response({"error": "insufficient funds"}, status=422)
        record = {"account": account, "hold": hold_id, "amount": amount, "side": side}
        self.holds[(account, hold_id)] = {**record, "status": "held"}
        return web.json_response(self.holds[(account, hold_id)], status=201)

    async def confirm(self, request: web.Request) -> web.Response:
        key = (request.match_info["account"], request.match_info["hold"])
        record = self.holds.get(key)
        if record is None or record["status"] == "cancelled":
            return web.json_response({"error": "no such hold"}, status=404)
        if record["status"] == "held":
            sign = -1 if record["side"] == "debit" else 1
            self.balances[key[0]] += sign * record["amount"]
            record["status"] = "confirmed"
        return web.json_response(record)

    async def cancel(self, request: web.Request) -> web.Response:
        account, hold_id = request.match_info["account"], request.match_info["hold"]
        record = self.holds.setdefault(
            (account, hold_id), {"account": account, "hold": hold_id, "amount": 0, "side": None}
        )
        if record.get("status") == "confirmed":
            return web.json_response({"error": "hold already confirmed"}, status=409)
        record["status"] = "cancelled"
        return web.json_response(record)

    async def listing(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "balances": self.balances,
                "holds": list(self.holds.values()),
            }
        )
