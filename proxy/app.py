"""Application factories: the public (proxy) app and the admin app, sharing metrics and readiness.

The public request path is one middleware, ``public_middleware``, reading top to bottom: request
id → idempotency → handler (a saga's status URL and the saga trigger routes first, then the
catch-all forwarder) → every sidecar error as problem+json → metrics and the access line, which
see the final status. With tracing on (``proxy.tracing``) a server-span middleware wraps
it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import Handler, Middleware

from proxy.admin.dashboard import setup_dashboard_routes
from proxy.admin.guard import admin_guard_middleware
from proxy.admin.idempotency_api import setup_idempotency_admin_routes
from proxy.admin.listener import admin_token_middleware, setup_admin_routes
from proxy.admin.reload_api import setup_reload_route
from proxy.admin.sagas_api import setup_saga_admin_routes
from proxy.config import LiveConfig, LoadedConfig
from proxy.forward_executor import FORWARD_ROUTE, ForwardExecutor
from proxy.idempotency import idempotency_ctx
from proxy.idempotency.executor import Executor
from proxy.idempotency.middleware import guarded
from proxy.keys import (
    CONFIG,
    EXECUTORS,
    METRICS,
    PUBLIC_APP,
    READINESS,
    RELOADER,
    REQUEST_ID,
    SAGAS,
    TASKS,
    TRACING,
)
from proxy.logs import log_access, request_id_for
from proxy.metrics import SidecarMetrics
from proxy.paths import refuse_escape
from proxy.problems import problem_for_failure, problems_middleware
from proxy.readiness import Readiness
from proxy.reload import Reloader
from proxy.resources import new_task_scheduler, task_scheduler_ctx, upstream_client_ctx
from proxy.sagas.brokers import brokers_ctx
from proxy.sagas.callbacks import setup_callback_routes
from proxy.sagas.completions import completions_ctx
from proxy.sagas.routes import SagaTriggers
from proxy.sagas.service import SagaService, saga_service_ctx
from proxy.sagas.status import setup_status_routes
from proxy.tracing import open_tracing, tracing_ctx
from saga_runner.tracing import NULL_TRACER

if TYPE_CHECKING:
    from proxy.tracing.otel import Tracing


@dataclass(frozen=True)
class SidecarApps:
    """The two applications one sidecar process serves."""

    public: web.Application
    admin: web.Application


SERVER_NAME = "saga-sidecar"


def _shared(
    app: web.Application,
    live: LiveConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None,
) -> None:
    app[CONFIG] = live
    app[METRICS] = metrics
    app[READINESS] = ready
    if sagas is not None:
        app[SAGAS] = sagas
    app.on_response_prepare.append(name_the_server)


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: saga-sidecar`` in place of aiohttp's default (set just before this hook), which
    names the Python and aiohttp versions; a proxied answer keeps its app's own header."""
    if response.headers.get("Server") == SERVER_SOFTWARE:
        response.headers["Server"] = SERVER_NAME


def public_middleware(metrics: SidecarMetrics) -> Middleware:
    """The public listener's one middleware, recording into ``metrics``.

    One frame instead of one per concern: it assigns the request id (``X-Request-Id``, echoed on
    the response), refuses a path that climbs above the root (400), applies idempotency,
    answers every sidecar error as problem+json, then counts and logs the request with its final
    status (an HTTP exception that propagates, such as a redirect, with its own status; anything
    else that propagates as 500).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request[REQUEST_ID] = request_id_for(request)
        started = time.perf_counter()
        status = 500
        try:
            try:
                refuse_escape(request.raw_path)
                response = await guarded(request, handler)
            except Exception as exc:
                problem = problem_for_failure(request, exc)
                if problem is None:
                    if isinstance(exc, web.HTTPException):
                        status = exc.status
                    raise
                response = problem
            status = response.status
            if not response.prepared:
                response.headers.setdefault("X-Request-Id", request_id)
            return response
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_request(request.method, status, seconds)
            log_access(request, status, seconds, request_id)

    return middleware


def build_public_app(
    live: LiveConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None = None,
    tracing: Tracing | None = None,
) -> web.Application:
    """The proxy listener's application (traced when ``tracing`` is given)."""
    limits = live.config.limits
    middlewares = [public_middleware(metrics)]
    if tracing is not None:
        middlewares.insert(0, tracing.middleware())
    app = web.Application(
        middlewares=middlewares,
        client_max_size=limits.max_request_body,
        handler_args={
            "max_field_size": limits.max_header_size,
            "max_line_size": limits.max_header_size,
        },
    )
    _shared(app, live, metrics, ready, sagas)
    app[TASKS] = new_task_scheduler()
    if tracing is not None:
        app[TRACING] = tracing
        app.cleanup_ctx.append(tracing_ctx)  # first: closed after everything that makes spans
    app.cleanup_ctx.append(upstream_client_ctx)
    app.cleanup_ctx.append(idempotency_ctx)  # before the scheduler: closed after it drains
    if sagas is not None:
        app.cleanup_ctx.append(brokers_ctx)  # before the saga service: closed after it stops
        app.cleanup_ctx.append(saga_service_ctx)
        app.cleanup_ctx.append(completions_ctx)  # after it: consumers stop before it closes
        setup_status_routes(app)  # a route of its own: the catch-all below never shadows it
        setup_callback_routes(app)  # a route of its own too, never forwarded
    app.cleanup_ctx.append(task_scheduler_ctx)
    # The catch-all route: the forwarder, or the saga triggers of the catalog loaded now in
    # front of it (a reload changes them without touching the router).
    forward = ForwardExecutor()
    route: ForwardExecutor | SagaTriggers = forward
    if sagas is not None:
        route = SagaTriggers(sagas, forward, limits.read_timeout)
    app.router.add_route("*", "/{tail:.*}", route.handle, name=FORWARD_ROUTE)
    executors: dict[Handler, Executor] = {route.handle: route}
    app[EXECUTORS] = executors
    return app


def build_admin_app(
    live: LiveConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None = None,
) -> web.Application:
    """The admin listener's application."""
    app = web.Application(
        middlewares=[problems_middleware, admin_token_middleware, admin_guard_middleware]
    )
    _shared(app, live, metrics, ready, sagas)
    setup_admin_routes(app)
    setup_reload_route(app)
    setup_idempotency_admin_routes(app)
    if sagas is not None:
        setup_saga_admin_routes(app)
        setup_dashboard_routes(app)
    return app


def build_apps(loaded: LoadedConfig, *, signal_parent: bool = False) -> SidecarApps:
    """Build both applications for one sidecar process.

    Args:
        loaded: the config the process started with.
        signal_parent: this process is one of ``workers`` > 1: ``POST /reload`` sends SIGHUP to
            the supervising parent, which passes it to every worker.
    """
    live = LiveConfig(loaded)
    metrics = SidecarMetrics()
    ready = Readiness()
    tracing = open_tracing(loaded.config.tracing)
    saga_tracer = NULL_TRACER if tracing is None else tracing.sagas
    sagas = SagaService(loaded, metrics, saga_tracer) if loaded.config.sagas is not None else None
    public = build_public_app(live, metrics, ready, sagas, tracing)
    admin = build_admin_app(live, metrics, ready, sagas)
    admin[PUBLIC_APP] = public  # operator retries/aborts run on the public app's scheduler
    reloader = Reloader(live, public, metrics, signal_parent=signal_parent)
    public[RELOADER] = admin[RELOADER] = reloader
    return SidecarApps(public=public, admin=admin)
