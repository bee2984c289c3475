"""The benchmark's upstream app: one aiohttp process answering fixed, small responses.

``GET /item`` answers a 200-byte JSON body, ``POST /echo`` reads the body and answers ``201`` with
a 200-byte JSON body (the "stored response" of the idempotency scenarios), ``POST /slow?ms=N``
answers after N milliseconds (holds an idempotency lock for the 409 storm), and ``/orders`` and
``/payments`` are the two steps (and compensations) of the benchmark's payment saga.

Run: ``python -m bench.upstream PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

from aiohttp import web

ITEM = json.dumps({"id": 1, "name": "x" * 166, "ok": True}).encode()
_ids = itertools.count(1)


def _padded(payload: dict[str, object], size: int = 200) -> bytes:
    body = json.dumps(payload, separators=(",", ":"))
    pad = max(0, size - len(body) - 8)
    return (body[:-1] + f',"p":"{"x" * pad}"}}').encode()


async def item(_: web.Request) -> web.Response:
    return web.Response(body=ITEM, content_type="application/json")


async def echo(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        status=201,
        body=_padded({"id": next(_ids), "status": "created"}),
        content_type="application/json",
    )


async def slow(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
    return web.Response(status=201, body=b"{}", content_type="application/json")


async def create(request: web.Request) -> web.Response:
    data = await request.json()
    answer = {"id": next(_ids), "status": "created", **data}
    return web.json_response(answer, status=201)


async def undo(_: web.Request) -> web.Response:
    return web.Response(status=204)


def build_app() -> web.Application:
    """The upstream's routes."""
    app = web.Application()
    app.router.add_get("/item", item)
    app.router.add_post("/echo", echo)
    app.router.add_post("/slow", slow)
    app.router.add_post("/orders", create)
    app.router.add_delete("/orders/{id}", undo)
    app.router.add_post("/payments", create)
    app.router.add_post("/payments/{id}/refund", undo)
    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT (uvloop when installed, like the sidecar)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
