"""Demo payment gateway: answers ``202 accepted`` now and reports the outcome later.

The long-running saga (``config/sagas/card_payment.yaml``) uses it both ways a real gateway
reports:

- **by callback**: ``POST /charges {order_id, amount}`` must carry the ``Saga-Callback`` header
  (400 without it). It answers ``202 {id, status: "pending"}`` and, ``callback_delay`` seconds
  later (1 s in the demo), posts the outcome to that URL: ``{"outcome": "success", "result":
  {id, ..., status: "captured", capture}}``, or, for an amount above ``decline_above`` (1000),
  ``{"outcome": "failure", "result": {id, ..., status: "declined", error: "card declined"}}``.
  A callback the sidecar does not take (no answer, a 5xx) is sent again, up to 5 times.
  ``POST /charges/{id}/refund`` undoes a charge (a declined one has nothing to undo: 200 as it is).
- **by polling**: ``POST /settlements {charge_id}`` answers ``202 {id, state: "pending"}``;
  ``GET /settlements/{id}`` says ``pending`` until ``settle_after`` seconds (1 s) have passed,
  then ``settled``. ``DELETE /settlements/{id}`` cancels one.

``GET /charges`` and ``GET /settlements`` show the state, each charge with the HTTP status its
callback was answered with (``callback_status``); the callback URL itself is never shown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from demo.services import json_body, next_id

CALLBACK_HEADER = "Saga-Callback"
CALLBACK_ATTEMPTS = 5


def _amount(body: dict[str, Any]) -> float:
    try:
        return float(body.get("amount") or 0)
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(text="amount must be a number") from None


class Gateway:
    """The gateway's charges and settlements, and the callbacks it still has to send."""

    def __init__(self, callback_delay: float, decline_above: float, settle_after: float) -> None:
        self.callback_delay = callback_delay
        self.decline_above = decline_above
        self.settle_after = settle_after
        self.charges: dict[str, dict[str, Any]] = {}
        self.settlements: dict[str, dict[str, Any]] = {}
        self._settle_at: dict[str, float] = {}
        self._callbacks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        """The gateway's routes; pending callbacks are cancelled when the app stops."""
        app = web.Application()
        app.router.add_post("/charges", self.charge)
        app.router.add_get("/charges", self.list_charges)
        app.router.add_post("/charges/{id}/refund", self.refund)
        app.router.add_post("/settlements", self.settle)
        app.router.add_get("/settlements", self.list_settlements)
        app.router.add_get("/settlements/{id}", self.settlement)
        app.router.add_delete("/settlements/{id}", self.cancel_settlement)
        app.on_cleanup.append(self._stop_callbacks)
        return app

    async def charge(self, request: web.Request) -> web.Response:
        callback = request.headers.get(CALLBACK_HEADER)
        if not callback:
            return web.json_response({"error": f"{CALLBACK_HEADER} header required"}, status=400)
        body = await json_body(request)
        charge = {
            "id": next_id("gch"),
            "order_id": body.get("order_id"),
            "amount": _amount(body),
            "status": "pending",
            "callback_status": None,
        }
        self.charges[charge["id"]] = charge
        task = asyncio.create_task(self._decide(charge, callback))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)
        return web.json_response(_public(charge), status=202)

    async def _decide(self, charge: dict[str, Any], callback: str) -> None:
        """After the delay: capture or decline the charge, then report it on ``callback``."""
        await asyncio.sleep(self.callback_delay)
        if charge["status"] != "pending":  # refunded before it was decided
            return
        if charge["amount"] > self.decline_above:
            charge.update(status="declined", error="card declined")
            outcome = "failure"
        else:
            charge.update(status="captured", capture=next_id("cap"))
            outcome = "success"
        await self._report(charge, callback, {"outcome": outcome, "result": _public(charge)})

    async def _report(self, charge: dict[str, Any], callback: str, body: dict[str, Any]) -> None:
        """POST ``body`` to ``callback``, again (a second apart) while it is not taken."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            for _ in range(CALLBACK_ATTEMPTS):
                try:
                    async with client.post(callback, json=body) as answer:
                        charge["callback_status"] = answer.status
                        if answer.status < 500:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    charge["callback_status"] = "unreachable"
                await asyncio.sleep(1)

    async def _stop_callbacks(self, app: web.Application) -> None:
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*self._callbacks, return_exceptions=True)

    async def list_charges(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.charges.values()))

    async def refund(self, request: web.Request) -> web.Response:
        charge = self.charges.get(request.match_info["id"])
        if charge is None:
            raise web.HTTPNotFound()
        if charge["status"] in ("pending", "captured"):
            charge["status"] = "refunded"
        return web.json_response(_public(charge))

    async def settle(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        settlement = {"id": next_id("stl"), "charge_id": body.get("charge_id"), "state": "pending"}
        self.settlements[settlement["id"]] = settlement
        self._settle_at[settlement["id"]] = time.monotonic() + self.settle_after
        return web.json_response(settlement, status=202)

    async def settlement(self, request: web.Request) -> web.Response:
        settlement = self._settlement(request)
        due = time.monotonic() >= self._settle_at[settlement["id"]]
        if settlement["state"] == "pending" and due:
            settlement["state"] = "settled"
        return web.json_response(settlement)

    async def cancel_settlement(self, request: web.Request) -> web.Response:
        settlement = self._settlement(request)
        settlement["state"] = "cancelled"
        return web.json_response(settlement)

    async def list_settlements(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.settlements.values()))

    def _settlement(self, request: web.Request) -> dict[str, Any]:
        settlement = self.settlements.get(request.match_info["id"])
        if settlement is None:
            raise web.HTTPNotFound()
        return settlement


def _public(charge: dict[str, Any]) -> dict[str, Any]:
    """A charge as the gateway reports it (without its callback bookkeeping)."""
    return {name: value for name, value in charge.items() if name != "callback_status"}


def gateway_app(
    callback_delay: float = 1.0, decline_above: float = 1000, settle_after: float = 1.0
) -> web.Application:
    """The payment gateway (see the module's docstring)."""
    return Gateway(callback_delay, decline_above, settle_after).app()
