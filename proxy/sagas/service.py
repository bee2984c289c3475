"""The saga runner as the proxy uses it: definitions, runtime lifecycle, and metrics.

``SagaService`` is built with the apps (definitions are loaded and validated synchronously, so a
sidecar with an invalid saga file does not start) and opened in the public app's cleanup
context, where it connects to the store. Both the public and the admin app reach it through
``SAGAS``. A config reload (``proxy.reload``) hands it a new catalog with ``reload``: the trigger
routes (``proxy.sagas.routes.SagaTriggers``) follow it at once, and instances already running
keep the version they started with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from proxy.config import LoadedConfig, reserved_routes
from proxy.errors import RuntimeUnavailable
from proxy.keys import BROKERS, READINESS, SAGAS
from proxy.metrics import SidecarMetrics
from proxy.sagas.settings import runtime_settings
from proxy.sagas.step_transport import UpstreamStepTransport
from proxy.sagas.watch import SagaWatch
from saga_runner.brokers.base import BrokerAdapter
from saga_runner.catalog import SagaCatalog, load_definitions
from saga_runner.recovery import RecoverySettings, RecoveryWorker
from saga_runner.runtime import SagaRuntime
from saga_runner.states import AttemptKind, SagaStatus
from saga_runner.tracing import NULL_TRACER, SagaTracer


def load_catalog(loaded: LoadedConfig, *, require_matches: bool = False) -> SagaCatalog:
    """The saga files a config with a ``sagas`` section names, validated.

    Args:
        loaded: the config.
        require_matches: a pattern that matches no file is an error (a reload, which must not
            drop every trigger because a directory was briefly empty); False: a warning
            (``serve``: see ``load_definitions``).

    Raises:
        ConfigError: listing every problem in every file.
    """
    config = loaded.config
    assert config.sagas is not None
    return load_definitions(
        loaded.base_dir,
        config.sagas.definitions,
        config.services,
        reserved_routes(config.sagas.status_path, config.sagas.callbacks.path),
        origin=loaded,
        require_matches=require_matches,
        brokers=config.sagas.brokers,
    )


class MetricsObserver:
    """Reports saga lifecycle events as the Prometheus metrics of docs/OPERATIONS.md."""

    def __init__(self, metrics: SidecarMetrics) -> None:
        self.metrics = metrics

    def saga_started(self, saga: str) -> None:
        """Count a new instance."""
        self.metrics.saga_started.labels(saga).inc()

    def saga_finished(self, saga: str, status: SagaStatus, seconds: float, saga_id: str) -> None:
        """Count the terminal status and observe the saga's duration."""
        counter = {
            SagaStatus.COMPLETED: self.metrics.saga_completed,
            SagaStatus.COMPENSATED: self.metrics.saga_compensated,
            SagaStatus.FAILED: self.metrics.saga_failed,
        }.get(status)
        if counter is not None:
            counter.labels(saga).inc()
            self.metrics.saga_duration.labels(saga).observe(seconds)

    def step_attempt(
        self, saga: str, step: str, kind: AttemptKind, outcome: str, seconds: float
    ) -> None:
        """Count one step call by outcome (other calls than an action are labelled by their
        kind: ``compensation_failed``, ``try_success``, ``confirm_retryable`` ...), time it."""
        label = outcome if kind is AttemptKind.ACTION else f"{kind.value}_{outcome}"
        self.metrics.saga_step_attempts.labels(saga, step, label).inc()
        self.metrics.observe_step(saga, step, kind.value, seconds)

    def run_started(self, saga: str) -> None:
        """One more saga running in this process."""
        self.metrics.saga_in_flight.labels(saga).inc()

    def run_stopped(self, saga: str) -> None:
        """One saga fewer running in this process."""
        self.metrics.saga_in_flight.labels(saga).dec()

    def deadline_exceeded(self, saga: str) -> None:
        """Count a saga whose deadline passed."""
        self.metrics.saga_deadline_exceeded.labels(saga).inc()


class WakingObserver(MetricsObserver):
    """``MetricsObserver`` that also wakes the status requests held for a saga that ended.

    Every run of this process that ends a saga reports it here: the trigger's own, one resumed
    by a callback or by the recovery loop, an operator's retry or abort.
    """

    def __init__(self, metrics: SidecarMetrics, watch: SagaWatch) -> None:
        super().__init__(metrics)
        self.watch = watch

    def saga_finished(self, saga: str, status: SagaStatus, seconds: float, saga_id: str) -> None:
        """Count it, and let the requests waiting for ``saga_id`` read it again now."""
        super().saga_finished(saga, status, seconds, saga_id)
        self.watch.ended(saga_id)


class SagaService:
    """Loaded saga definitions plus, once opened, the runtime that executes them."""

    def __init__(
        self, loaded: LoadedConfig, metrics: SidecarMetrics, tracer: SagaTracer = NULL_TRACER
    ) -> None:
        config = loaded.config
        if config.sagas is None:
            raise ValueError("the config has no sagas section")
        self.settings = runtime_settings(loaded)
        self.catalog: SagaCatalog = load_catalog(loaded)
        self.watch = SagaWatch()  # wakes status requests waiting for a saga's end
        self.observer = WakingObserver(metrics, self.watch)
        self.tracer = tracer
        self.recovery_settings = RecoverySettings(
            interval=config.sagas.recovery_interval,
            lease_seconds=config.sagas.lease,
            retention_seconds=config.sagas.retention,
        )
        self.shutdown_grace = config.shutdown_grace
        self.max_input = config.sagas.max_input
        self.status_path = config.sagas.status_path
        self.callbacks_path = config.sagas.callbacks.path
        self._metrics = metrics
        metrics.declare_sagas(definition.name for definition in self.catalog)
        self._runtime: SagaRuntime | None = None
        self._recovery: RecoveryWorker | None = None

    def reload(self, loaded: LoadedConfig, catalog: SagaCatalog) -> None:
        """Apply a reloaded config and its already validated ``catalog`` (``proxy.reload``):
        the next trigger starts the new versions; running instances finish on theirs."""
        assert loaded.config.sagas is not None
        self.settings = runtime_settings(loaded)
        self.catalog = catalog.retaining(self.catalog)
        self._metrics.declare_sagas(definition.name for definition in catalog)
        self.max_input = loaded.config.sagas.max_input
        if self._runtime is not None:
            self._runtime.reload(catalog, self.settings)

    @property
    def runtime(self) -> SagaRuntime:
        """The open runtime (only between app startup and cleanup).

        Raises:
            RuntimeUnavailable: the runtime is not open (the sidecar is starting or stopping).
        """
        if self._runtime is None:
            raise RuntimeUnavailable("the saga runtime is not open")
        return self._runtime

    async def open(self, brokers: Mapping[str, BrokerAdapter] | None = None) -> None:
        """Connect to the store, build the engine and start the recovery loop.

        Step calls go over the proxy's own HTTP client (``UpstreamStepTransport``), which the
        runtime closes; steps that publish go through ``brokers`` (opened by the app).
        """
        self._runtime = await SagaRuntime.open(
            self.settings,
            self.catalog,
            self.observer,
            UpstreamStepTransport(),
            self.tracer,
            brokers,
        )
        self._recovery = RecoveryWorker(
            self._runtime,
            self.recovery_settings,
            self._metrics.saga_oldest_unfinished_age.set,
            self._metrics.report_waiting,
        )
        self._recovery.start()

    @property
    def recovery(self) -> RecoveryWorker:
        """The open recovery worker, which also resumes sagas whose wait a callback ended.

        Raises:
            RuntimeUnavailable: the runtime is not open.
        """
        if self._recovery is None:
            raise RuntimeUnavailable("the saga runtime is not open")
        return self._recovery

    async def close(self) -> None:
        """Stop the recovery loop (resumed sagas get the shutdown grace), close the runtime."""
        if self._recovery is not None:
            await self._recovery.stop(self.shutdown_grace)
            self._recovery = None
        if self._runtime is not None:
            await self._runtime.close()
            self._runtime = None


async def saga_service_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the saga runtime with the public app and register the store's readiness probe."""
    service = app[SAGAS]
    await service.open(app.get(BROKERS))
    app[READINESS].register("saga_store", service.runtime.store.ping)
    yield
    await service.close()
