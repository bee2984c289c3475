"""A real upstream for operator tests: orders and payments whose behaviour a test switches.

``POST /orders`` creates an order (``201 {"id": "ord-N"}``), ``DELETE /orders/{id}`` removes it
(``500`` while ``delete_fails``), ``POST /payments`` charges (``201``; ``402`` when ``declines``;
with ``blocks`` it answers only once ``release_charge`` is set, after setting ``charge_started``),
``POST /payments/by-saga/{saga_id}/refund`` refunds whatever a saga charged (``200``).
Under ``/shape/`` (the group and TCC sagas' steps) every call succeeds (``201`` to a POST, else
``200``) unless its ``"METHOD /path"`` matches a pattern (``fnmatch``: ``*`` matches anything)
in ``refuses`` (``409``) or ``fails`` (``500``), or one held by ``hold``: then it answers once
its gate is set, after setting its ``entered`` event.
Every call is journaled as ``"METHOD /path"``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
from typing import Any

from aiohttp import web


class Shop:
    """The state and switches of the fake orders/payments service."""

    def __init__(self) -> None:
        self.url = ""
        self.delete_fails = False
        self.declines = False
        self.blocks = False
        self.charge_started = asyncio.Event()
        self.release_charge = asyncio.Event()
        self.orders: dict[str, Any] = {}
        self.refunded: list[str] = []
        self.calls: list[str] = []
        self.bodies: list[Any] = []
        self.refuses: set[str] = set()
        self.fails: set[str] = set()
        self.gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}
        self._ids = itertools.count(1)

    def hold(self, call: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the calls matching ``"METHOD /path"`` (``fnmatch``) until the returned gate is
        set; also returns its ``entered`` event, set when such a call arrives. Gates are opened
        at the end of the test."""
        self.gates[call] = (asyncio.Event(), asyncio.Event())
        return self.gates[call]

    def app(self) -> web.Application:
        """The aiohttp app serving the routes above."""
        app = web.Application()
        app.router.add_post("/orders", self.create_order)
        app.router.add_delete("/orders/{id}", self.delete_order)
        app.router.add_post("/payments", self.charge)
        app.router.add_post("/payments/by-saga/{saga_id}/refund", self.refund)
        app.router.add_route("*", "/shape/{tail:.*}", self.shape)
        return app

    async def _journal(self, request: web.Request) -> Any:
        self.calls.append(f"{request.method} {request.path}")
        body = await request.json() if request.can_read_body else None
        self.bodies.append(body)
        return body

    async def create_order(self, request: web.Request) -> web.Response:
        body = await self._journal(request)
        order_id = f"ord-{next(self._ids)}"
        self.orders[order_id] = body
        return web.json_response({"id": order_id, "order": body}, status=201)

    async def delete_order(self, request: web.Request) -> web.Response:
        await self._journal(request)
        if self.delete_fails:
            return web.json_response({"error": "orders database is down"}, status=500)
        self.orders.pop(request.match_info["id"], None)
        return web.json_response({"deleted": request.match_info["id"]})

    async def charge(self, request: web.Request) -> web.Response:
        await self._journal(request)
        if self.blocks:
            self.charge_started.set()
            await self.release_charge.wait()
        if self.declines:
            return web.json_response({"error": "card declined"}, status=402)
        return web.json_response({"id": f"pay-{next(self._ids)}"}, status=201)

    async def refund(self, request: web.Request) -> web.Response:
        await self._journal(request)
        self.refunded.append(request.match_info["saga_id"])
        return web.json_response({"refunded": request.match_info["saga_id"]})

    async def shape(self, request: web.Request) -> web.Response:
        await self._journal(request)
        call = f"{request.method} {request.path}"
        for pattern, (gate, entered) in self.gates.items():
            if fnmatch.fnmatchcase(call, pattern):
                entered.set()
                await gate.wait()
        if any(fnmatch.fnmatchcase(call, pattern) for pattern in self.refuses):
            return web.json_response({"error": "refused"}, status=409)
        if any(fnmatch.fnmatchcase(call, pattern) for pattern in self.fails):
            return web.json_response({"error": "down"}, status=500)
        status = 201 if request.method == "POST" else 200
        return web.json_response({"id": f"{request.path}-{next(self._ids)}"}, status=status)
