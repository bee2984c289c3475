"""The admin listener: health and readiness probes, Prometheus metrics, and the token guard.

``build_admin_app`` serves ``/healthz``, ``/readyz`` and ``/metrics`` to anyone; every other admin
route (the saga API, the dashboard) requires ``Authorization: Bearer <admin.token>`` when a token
is configured, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.keys import CONFIG, METRICS, READINESS
from proxy.problems import problem_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def bearer_token_matches(header: str, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # surrogateescape: aiohttp hands over undecodable header bytes as lone surrogates.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


@web.middleware
async def admin_token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require the admin token on every route except the probes and metrics."""
    token = request.app[CONFIG].config.admin.token
    authorized = bearer_token_matches(request.headers.get("Authorization", ""), token)
    if token and request.path not in OPEN_PATHS and not authorized:
        return problem_response(
            401,
            "this admin route needs 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": 'Bearer realm="saga-sidecar admin"'},
        )
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every store answers, else 503 naming those that do not."""
    failing = await request.app[READINESS].failing()
    if failing:
        names = ", ".join(sorted(failing))
        return problem_response(
            503, f"not ready: {names}", title="Service Unavailable", failing=failing
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def setup_admin_routes(app: web.Application) -> None:
    """Add the probe and metrics routes."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
