"""The two saga shapes of the operator suite, over the ``Shop``'s ``/shape/`` routes.

``checkout``: ``parallel: [reserve, coupon, fraud]``, then ``charge`` (``POST /api/checkout``);
each step is ``POST /shape/<step>``, undone by ``DELETE /shape/<step>/<saga id>``.
``transfer`` (``kind: tcc``, ``POST /api/transfer``): ``debit``, then ``parallel: [credit, fee]``,
each tried with
``POST /shape/<step>``, confirmed with ``POST /shape/<step>/<saga id>/confirm`` and cancelled
with ``DELETE /shape/<step>/<saga id>``. Both are async, with one forward attempt per step and
two fast attempts per compensation, confirm and cancel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from saga_operator.conftest import Sidecar

ONE = {"attempts": 1}
TWO_FAST = {"attempts": 2, "backoff": "10ms", "max_backoff": "10ms"}
GROUP = ("reserve", "coupon", "fraud")


def _call(method: str, path: str) -> dict[str, Any]:
    return {"service": "shop", "method": method, "path": path, "retry": TWO_FAST}


def _step(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "action": {"service": "shop", "method": "POST", "path": f"/shape/{name}"},
        "compensation": _call("DELETE", f"/shape/{name}/{{{{ saga.id }}}}"),
        "retry": ONE,
        "timeout": "10s",
    }


def _tcc_step(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "try": {"service": "shop", "method": "POST", "path": f"/shape/{name}"},
        "confirm": _call("POST", f"/shape/{name}/{{{{ saga.id }}}}/confirm"),
        "cancel": _call("DELETE", f"/shape/{name}/{{{{ saga.id }}}}"),
        "retry": ONE,
        "timeout": "10s",
    }


CHECKOUT_SAGA: dict[str, Any] = {
    "name": "checkout",
    "trigger": {"method": "POST", "path": "/api/checkout"},
    "mode": "async",
    "steps": [{"parallel": [_step(name) for name in GROUP]}, _step("charge")],
}

TRANSFER_SAGA: dict[str, Any] = {
    "name": "transfer",
    "kind": "tcc",
    "trigger": {"method": "POST", "path": "/api/transfer"},
    "mode": "async",
    "steps": [_tcc_step("debit"), {"parallel": [_tcc_step("credit"), _tcc_step("fee")]}],
}

SHAPE_SAGAS = (CHECKOUT_SAGA, TRANSFER_SAGA)


async def start(client: aiohttp.ClientSession, sidecar: Sidecar, saga: str) -> str:
    """Trigger ``checkout`` or ``transfer``; return the saga's id."""
    async with client.post(f"{sidecar.url}/api/{saga}", json={}) as response:
        assert response.status == 202, await response.text()
        saga_id: str = (await response.json())["saga_id"]
        return saga_id
