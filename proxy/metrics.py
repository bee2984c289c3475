"""Prometheus metrics (names fixed: docs/OPERATIONS.md, Metrics) on a registry per app.

``SidecarMetrics`` owns every metric the sidecar exports; it is built once per application on its
own ``CollectorRegistry`` so tests can build many apps in one process. The saga engine reports
through the ``saga_runner.observer`` protocol (``proxy.sagas.service.MetricsObserver``).

Label values come from config (declared sagas and their steps) or from a fixed set (upstream
error kinds, the standard HTTP methods): never from what a client sends, so no request path or
invented method adds a series. The children observed per forwarded request are cached, so the hot
path pays a dict lookup, not ``labels()`` and its validation.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from proxy.errors import UpstreamBusy, UpstreamTimeout, UpstreamUnreachable, UpstreamUpgrade
from proxy.version import version
from saga_runner.awaits import CALLBACK_OUTCOMES
from saga_runner.brokers.base import RejectReason

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Bounds the cache of labelled children (the app may answer any status from 100 to 999).
_MAX_CACHED_CHILDREN = 1024
_SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The request methods of RFC 9110 and PATCH; any other token a client sends is counted as
# OTHER_METHOD (OpenTelemetry's spelling), so invented methods cannot add series.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"
# upstream_errors_total's kinds: every one is exported from the start (at 0), so a rate or a
# ratio over them exists before the first failure.
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "overflow", "upgrade")


def upstream_error_kind(exc: BaseException) -> str:
    """The ``upstream_errors_total`` kind of a failed upstream call or body read.

    ``connect``: no connection could be made; ``timeout``: no answer (or no next body chunk)
    in ``upstream.timeout``; ``overflow``: no pooled connection free in time, or the client
    holds its share (nothing was sent); ``upgrade``: the app answered 101; ``reset``: the
    connection broke or the answer was not valid HTTP.
    """
    if isinstance(exc, UpstreamUnreachable):
        return "connect"
    if isinstance(exc, (UpstreamTimeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, UpstreamBusy):
        return "overflow"
    if isinstance(exc, UpstreamUpgrade):
        return "upgrade"
    return "reset"


CALLBACK_VIA_HTTP = "http"
"""The ``via`` label of ``saga_callbacks_total`` for callbacks on the HTTP endpoint."""


class SidecarMetrics:
    """Every metric the sidecar exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests",
            "Proxied requests by method and status",
            ["method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer a proxied request (to response headers)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.idem_requests = Counter(
            "idempotency_requests", "Covered requests that carried an idempotency key", registry=r
        )
        self.idem_hits = Counter(
            "idempotency_cache_hits", "Requests answered by replaying a stored response", registry=r
        )
        self.idem_conflicts = Counter(
            "idempotency_conflicts", "Duplicates refused while the first was in flight", registry=r
        )
        self.idem_mismatches = Counter(
            "idempotency_mismatches", "Key reused with a different request", registry=r
        )
        self.idem_abandoned = Counter(
            "idempotency_abandoned",
            "Keys whose holder stopped renewing after the request may have been sent",
            registry=r,
        )
        self.idem_store_errors = Counter(
            "idempotency_store_errors", "Idempotency store failures", ["action"], registry=r
        )
        self.idem_not_stored = Counter(
            "idempotency_not_stored",
            "Answers delivered but not stored for replay (duplicates get 409)",
            ["reason"],
            registry=r,
        )
        self.saga_started = Counter("saga_started", "Sagas started", ["saga"], registry=r)
        self.saga_completed = Counter("saga_completed", "Sagas completed", ["saga"], registry=r)
        self.saga_compensated = Counter(
            "saga_compensated", "Sagas rolled back by compensation", ["saga"], registry=r
        )
        self.saga_failed = Counter(
            "saga_failed", "Sagas whose compensation failed", ["saga"], registry=r
        )
        self.saga_duration = Histogram(
            "saga_duration_seconds",
            "Time from saga start to a terminal state",
            ["saga"],
            buckets=_SAGA_BUCKETS,
            registry=r,
        )
        self.saga_step_attempts = Counter(
            "saga_step_attempts", "Step calls by outcome", ["saga", "step", "outcome"], registry=r
        )
        self.saga_in_flight = Gauge(
            "saga_in_flight", "Sagas running or compensating in this process", ["saga"], registry=r
        )
        self.saga_oldest_unfinished_age = Gauge(
            "saga_oldest_unfinished_age_seconds",
            "Age of the oldest saga not yet in a terminal state (whole store)",
            registry=r,
        )
        self.upstream_duration = Histogram(
            "upstream_request_duration_seconds",
            "Time from sending a forwarded request upstream to its answer's headers (or failure)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "upstream_errors",
            "Forwarded requests that failed at the upstream, by kind",
            ["kind"],
            registry=r,
        )
        self.saga_step_duration = Histogram(
            "saga_step_duration_seconds",
            "Time of one step call (each attempt), action or compensation",
            ["saga", "step", "kind"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "saga_sidecar_build_info", "The running release (value 1)", ["version"], registry=r
        )
        self.build_info.labels(version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.saga_callback_rejected = Counter(
            "saga_callback_rejected",
            "Completion messages acknowledged without being applied (bad JSON, unknown token)",
            ["reason"],
            registry=r,
        )
        self.config_reload_failures = Counter(
            "config_reload_failures",
            "Reloads refused because a file was invalid (the config in effect was kept)",
            registry=r,
        )
        self.config_last_reload_success = Gauge(
            "config_last_reload_success_timestamp_seconds",
            "When the config in effect was loaded (start, or the last successful reload)",
            registry=r,
        )
        self.config_last_reload_successful = Gauge(
            "config_last_reload_successful",
            "1 when the last reload succeeded (or none was tried yet), 0 when it was refused",
            registry=r,
        )
        self.saga_waiting = Gauge(
            "saga_waiting",
            "Steps waiting for their outcome (all replicas: read from the saga store)",
            ["saga"],
            registry=r,
        )
        self.saga_callbacks = Counter(
            "saga_callbacks",
            "Callbacks applied (recorded, or the same outcome again), by transport and outcome",
            ["via", "outcome"],
            registry=r,
        )
        self.saga_deadline_exceeded = Counter(
            "saga_deadline_exceeded",
            "Sagas whose deadline passed before their forward steps were done",
            ["saga"],
            registry=r,
        )
        # Fixed label sets, exported at 0 so rules see the series before the first event.
        for reason in RejectReason:
            self.saga_callback_rejected.labels(reason.value)
        for outcome in CALLBACK_OUTCOMES:
            self.saga_callbacks.labels(CALLBACK_VIA_HTTP, outcome.value)
        self._waiting_sagas: set[str] = set()
        # http_requests_total's children by (method, status): labels() per request costs a lock,
        # a tuple of strings and a validation; the set of methods and statuses seen is small.
        self._http_children: dict[tuple[str, int], Counter] = {}
        self._upstream_error_children = {
            kind: self.upstream_errors.labels(kind) for kind in UPSTREAM_ERROR_KINDS
        }
        # Bounded by the declared sagas' steps (a reload may add some: never a client).
        self._step_children: dict[tuple[str, str, str], Histogram] = {}

    def declare_sagas(self, names: Iterable[str]) -> None:
        """Export every per-saga series of the declared sagas ``names`` at 0 from the start.

        A labelled counter has no series until its first event, so ``increase()`` over a
        saga's first deadline or failure would see nothing, and a rule or dashboard that reads
        it finds no metric. Called at start and on every reload (names are bounded by config).
        """
        for saga in names:
            for counter in (
                self.saga_started,
                self.saga_completed,
                self.saga_compensated,
                self.saga_failed,
                self.saga_deadline_exceeded,
            ):
                counter.labels(saga)
            self.saga_in_flight.labels(saga)
            self.saga_waiting.labels(saga)

    def declare_callback_vias(self, brokers: Iterable[str]) -> None:
        """Export ``saga_callbacks_total`` at 0 for every outcome of completion messages from
        each configured broker (``via`` is the broker's name, bounded by config)."""
        for broker in brokers:
            for outcome in CALLBACK_OUTCOMES:
                self.saga_callbacks.labels(broker, outcome.value)

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        """Count one public request answered with ``status`` and time it (``seconds``)."""
        child = self._http_children.get((method, status))
        if child is None:
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            child = self._http_children.get((method, status))
        if child is None:
            child = self.http_requests.labels(method, str(status))
            if len(self._http_children) < _MAX_CACHED_CHILDREN:
                self._http_children[method, status] = child
        child.inc()
        self.http_duration.observe(seconds)

    def observe_upstream(self, seconds: float) -> None:
        """Time one forwarded request's upstream call, answered or failed (``seconds``)."""
        self.upstream_duration.observe(seconds)

    def upstream_failed(self, exc: BaseException) -> None:
        """Count one forwarded request that failed at the upstream (see ``upstream_error_kind``)."""
        self._upstream_error_children[upstream_error_kind(exc)].inc()

    def report_waiting(self, counts: dict[str, int]) -> None:
        """Set ``saga_waiting`` to ``counts`` (by saga name); a saga no longer listed is 0."""
        for saga in self._waiting_sagas.difference(counts):
            self.saga_waiting.labels(saga).set(0)
        for saga, count in counts.items():
            self.saga_waiting.labels(saga).set(count)
        self._waiting_sagas.update(counts)

    def observe_step(self, saga: str, step: str, kind: str, seconds: float) -> None:
        """Time one call of ``step``'s action or compensation (``kind``)."""
        key = (saga, step, kind)
        child = self._step_children.get(key)
        if child is None:
            child = self._step_children[key] = self.saga_step_duration.labels(saga, step, kind)
        child.observe(seconds)
