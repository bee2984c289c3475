"""Routes answered by the sidecar itself (saga triggers) are protected like forwarded ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from conftest import Upstream

from proxy.config import LoadedConfig, SidecarConfig
from proxy.idempotency import idempotency_ctx, idempotency_middleware
from proxy.keys import CONFIG, METRICS, READINESS, TASKS
from proxy.metrics import SidecarMetrics
from proxy.problems import problems_middleware
from proxy.readiness import Readiness
from proxy.resources import new_task_scheduler, task_scheduler_ctx, upstream_client_ctx


def local_app(tmp_path: Path, store_url: str, calls: list[object]) -> web.Application:
    """An app whose routes are local handlers behind the idempotency middleware."""
    config = SidecarConfig.model_validate(
        {"upstream": {"url": "http://127.0.0.1:9"}, "idempotency": {"store": store_url}}
    )
    app = web.Application(middlewares=[problems_middleware, idempotency_middleware])
    app[CONFIG] = LoadedConfig(path=tmp_path / "sidecar.yaml", config=config)
    app[METRICS] = SidecarMetrics()
    app[READINESS] = Readiness()
    app[TASKS] = new_task_scheduler()
    for ctx in (upstream_client_ctx, idempotency_ctx, task_scheduler_ctx):
        app.cleanup_ctx.append(ctx)

    async def start_saga(request: web.Request) -> web.Response:
        document = await request.json()
        calls.append(document)
        return web.json_response({"saga_id": f"s{len(calls)}", "input": document}, status=201)

    async def refuse(request: web.Request) -> web.Response:
        calls.append(await request.read())
        raise web.HTTPBadRequest(text="order_no is required")

    app.router.add_post("/sagas/payment", start_saga)
    app.router.add_post("/sagas/refuse", refuse)
    return app


async def test_local_handler_reads_the_body_runs_once_and_is_replayed(
    upstream_server: Callable[..., Awaitable[Upstream]], tmp_path: Path, redis_store_url: str
) -> None:
    calls: list[object] = []
    served = await upstream_server(local_app(tmp_path, redis_store_url, calls))
    url = f"{served.url}/sagas/payment"
    async with aiohttp.ClientSession() as client:
        bodies = []
        for _ in range(2):
            headers = {"Idempotency-Key": "saga-1"}
            async with client.post(url, json={"order_no": "A1"}, headers=headers) as response:
                bodies.append((response.status, response.headers.get("Idempotent-Replayed"),
                               await response.json()))  # fmt: skip
    assert calls == [{"order_no": "A1"}]
    assert bodies[0] == (201, None, {"saga_id": "s1", "input": {"order_no": "A1"}})
    assert bodies[1] == (201, "true", bodies[0][2])


async def test_local_handler_http_error_is_stored_as_a_problem(
    upstream_server: Callable[..., Awaitable[Upstream]], tmp_path: Path, redis_store_url: str
) -> None:
    calls: list[object] = []
    served = await upstream_server(local_app(tmp_path, redis_store_url, calls))
    async with aiohttp.ClientSession() as client:
        replies = []
        for _ in range(2):
            headers = {"Idempotency-Key": "saga-2"}
            async with client.post(f"{served.url}/sagas/refuse", data=b"{}", headers=headers) as r:
                replies.append((r.status, r.content_type, await r.read(), r.headers))
    assert calls == [b"{}"]
    assert [reply[0] for reply in replies] == [400, 400]
    assert replies[0][1] == "application/problem+json"
    assert replies[1][2] == replies[0][2] and b"order_no is required" in replies[0][2]
    assert replies[1][3]["Idempotent-Replayed"] == "true"
