"""Prometheus metrics (names fixed: docs/OPERATIONS.md, Metrics) on a registry per app.

``SidecarMetrics`` owns every metric the sidecar exports; it is built once per application on its
own ``CollectorRegistry`` so tests can build many apps in one process. The saga engine reports
through the ``saga_runner.observer`` protocol, which ``SidecarMetrics`` also implements.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Bounds the cache of labelled children (a client may send any method token).
_MAX_CACHED_CHILDREN = 1024
_SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


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
        # http_requests_total's children by (method, status): labels() per request costs a lock,
        # a tuple of strings and a validation; the set of methods and statuses seen is small.
        self._http_children: dict[tuple[str, int], Counter] = {}

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        """Count one public request answered with ``status`` and time it (``seconds``)."""
        child = self._http_children.get((method, status))
        if child is None:
            child = self.http_requests.labels(method, str(status))
            if len(self._http_children) < _MAX_CACHED_CHILDREN:
                self._http_children[method, status] = child
        child.inc()
        self.http_duration.observe(seconds)
