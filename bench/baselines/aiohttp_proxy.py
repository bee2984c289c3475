"""The baseline: a minimal hand-written aiohttp reverse proxy, as a user would write one.

One ``ClientSession`` with a keep-alive pool, a catch-all route, request and response bodies read
whole, hop-by-hop headers dropped. No idempotency, metrics, logging or limits: the floor that the
sidecar's pass-through path is compared with.

Run: ``python -m bench.baselines.aiohttp_proxy PORT UPSTREAM_URL``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host"}
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
UPSTREAM: web.AppKey[str] = web.AppKey("upstream")


async def proxy(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = await request.read()
    url = request.app[UPSTREAM] + request.raw_path
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=body or None, allow_redirects=False
    ) as upstream:
        data = await upstream.read()
        out = {
            k: v for k, v in upstream.headers.items() if k.lower() not in HOP | {"content-length"}
        }
        return web.Response(status=upstream.status, headers=out, body=data)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[SESSION].close()


def main() -> None:
    """Serve on 127.0.0.1:PORT in front of UPSTREAM_URL (uvloop when installed)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app[UPSTREAM] = sys.argv[2].rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
