"""Application factories: the public (proxy) app and the admin app, sharing metrics and readiness.

The public request path reads top to bottom in ``build_public_app``'s middleware list: metrics →
access log → problems (every sidecar error as problem+json) → idempotency → handler (saga
trigger routes first, then the catch-all forwarder).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.admin import admin_token_middleware, setup_admin_routes
from proxy.admin_sagas import setup_saga_admin_routes
from proxy.config import LoadedConfig
from proxy.dashboard import setup_dashboard_routes
from proxy.idempotency import FORWARD_ROUTE, idempotency_ctx, idempotency_middleware
from proxy.keys import CONFIG, FORWARDER, METRICS, PUBLIC_APP, READINESS, SAGAS
from proxy.logs import access_log_middleware
from proxy.metrics import SidecarMetrics, metrics_middleware
from proxy.problems import problems_middleware
from proxy.readiness import Readiness
from proxy.resources import task_scheduler_ctx, upstream_client_ctx
from proxy.saga_routes import setup_saga_routes
from proxy.saga_service import SagaService, saga_service_ctx


@dataclass(frozen=True)
class SidecarApps:
    """The two applications one sidecar process serves."""

    public: web.Application
    admin: web.Application


async def forward_handler(request: web.Request) -> web.StreamResponse:
    """Catch-all route: pass the request through to the upstream app."""
    return await request.app[FORWARDER].handle(request)


def _shared(
    app: web.Application,
    loaded: LoadedConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None,
) -> None:
    app[CONFIG] = loaded
    app[METRICS] = metrics
    app[READINESS] = ready
    if sagas is not None:
        app[SAGAS] = sagas


def build_public_app(
    loaded: LoadedConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None = None,
) -> web.Application:
    """The proxy listener's application."""
    limits = loaded.config.limits
    app = web.Application(
        middlewares=[
            metrics_middleware,
            access_log_middleware,
            problems_middleware,
            idempotency_middleware,
        ],
        client_max_size=limits.max_request_body,
        handler_args={
            "max_field_size": limits.max_header_size,
            "max_line_size": limits.max_header_size,
        },
    )
    _shared(app, loaded, metrics, ready, sagas)
    app.cleanup_ctx.append(upstream_client_ctx)
    app.cleanup_ctx.append(idempotency_ctx)  # before the scheduler: closed after it drains
    if sagas is not None:
        app.cleanup_ctx.append(saga_service_ctx)
        setup_saga_routes(app)
    app.cleanup_ctx.append(task_scheduler_ctx)
    app.router.add_route("*", "/{tail:.*}", forward_handler, name=FORWARD_ROUTE)
    return app


def build_admin_app(
    loaded: LoadedConfig,
    metrics: SidecarMetrics,
    ready: Readiness,
    sagas: SagaService | None = None,
) -> web.Application:
    """The admin listener's application."""
    app = web.Application(middlewares=[problems_middleware, admin_token_middleware])
    _shared(app, loaded, metrics, ready, sagas)
    setup_admin_routes(app)
    if sagas is not None:
        setup_saga_admin_routes(app)
        setup_dashboard_routes(app)
    return app


def build_apps(loaded: LoadedConfig) -> SidecarApps:
    """Build both applications for one sidecar process."""
    metrics = SidecarMetrics()
    ready = Readiness()
    sagas = SagaService(loaded, metrics) if loaded.config.sagas is not None else None
    public = build_public_app(loaded, metrics, ready, sagas)
    admin = build_admin_app(loaded, metrics, ready, sagas)
    admin[PUBLIC_APP] = public  # operator retries/aborts run on the public app's scheduler
    return SidecarApps(public=public, admin=admin)
