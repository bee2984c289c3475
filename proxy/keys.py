"""Every typed ``web.AppKey`` and request-scoped key the proxy uses, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from aiojobs import Scheduler

if TYPE_CHECKING:
    from proxy.config import LiveConfig
    from proxy.forward import Forwarder
    from proxy.idempotency.executor import Executor, Handler
    from proxy.idempotency.keys import KeyScoper
    from proxy.metrics import SidecarMetrics
    from proxy.readiness import Readiness
    from proxy.reload import Reloader
    from proxy.sagas.service import SagaService
    from proxy.tracing.otel import Tracing
    from saga_runner.brokers.registry import BrokerRegistry

# The config in effect (a reload replaces what it holds): read ``.config`` per use.
CONFIG: web.AppKey[LiveConfig] = web.AppKey("config")
METRICS: web.AppKey[SidecarMetrics] = web.AppKey("metrics")
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
TASKS: web.AppKey[Scheduler] = web.AppKey("tasks")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
SAGAS: web.AppKey[SagaService] = web.AppKey("sagas")
# The configured message brokers (``sagas.brokers``), open between app startup and cleanup.
BROKERS: web.AppKey[BrokerRegistry] = web.AppKey("brokers")
# Only when tracing is on (``tracing.endpoint`` is set).
TRACING: web.AppKey[Tracing] = web.AppKey("tracing")
# The idempotency executor of each route handler that has one (filled as routes are added).
EXECUTORS: web.AppKey[dict[Handler, Executor]] = web.AppKey("executors")
# Route handlers the idempotency guard never covers: the sidecar's own endpoints on the public
# listener (a saga's status URL), whatever ``idempotency.methods`` and ``routes`` say.
UNGUARDED: web.AppKey[frozenset[Handler]] = web.AppKey("unguarded")
# Paths whose last segment is a secret (the callbacks path: its tokens): logs show
# ``<path>/<redacted>`` instead of what follows them.
SECRET_PATHS: web.AppKey[tuple[str, ...]] = web.AppKey("secret_paths")
# The one key scoper: the idempotency guard's, which saga triggers scope their keys with too.
KEY_SCOPER: web.AppKey[KeyScoper] = web.AppKey("key_scoper")
# On the admin app: the public app, whose TASKS scheduler runs operator retries and aborts (it is
# drained at shutdown before the saga runtime closes).
PUBLIC_APP: web.AppKey[web.Application] = web.AppKey("public_app")
# On both apps: what re-reads the config and saga files (SIGHUP, the file watch, POST /reload).
RELOADER: web.AppKey[Reloader] = web.AppKey("reloader")

# Typed request keys: aiohttp 3.14 warns (NotAppKeyWarning) on plain string keys.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
IDEMPOTENCY_OUTCOME: web.RequestKey[str] = web.RequestKey("idempotency_outcome", str)
UPSTREAM_SECONDS: web.RequestKey[float] = web.RequestKey("upstream_seconds", float)
