"""Metrics of the public listener: requests counted by method and status, and timed."""

from __future__ import annotations

from proxy.metrics import SidecarMetrics


def requests_total(metrics: SidecarMetrics, method: str, status: int) -> float:
    labels = {"method": method, "status": str(status)}
    return metrics.registry.get_sample_value("http_requests_total", labels) or 0.0


def test_request_counts_by_method_and_status() -> None:
    metrics = SidecarMetrics()
    for method, status in [("GET", 200), ("GET", 200), ("PUT", 404), ("GET", 502)]:
        metrics.observe_request(method, status, 0.003)
    assert requests_total(metrics, "GET", 200) == 2
    assert requests_total(metrics, "PUT", 404) == 1
    assert requests_total(metrics, "GET", 502) == 1
    samples = {"le": "0.005"}
    assert metrics.registry.get_sample_value("http_request_duration_seconds_bucket", samples) == 4


def test_many_distinct_methods_are_all_counted() -> None:
    metrics = SidecarMetrics()
    methods = [f"M{i}" for i in range(1100)]
    for method in methods + methods:
        metrics.observe_request(method, 405, 0.001)
    assert all(requests_total(metrics, method, 405) == 2 for method in methods)
