"""The public listener's access line and metrics."""

from __future__ import annotations

import logging

import pytest

from proxy.logs import JsonFormatter, access_json_line, access_log
from proxy.metrics import SidecarMetrics


def requests_total(metrics: SidecarMetrics, method: str, status: int) -> float:
    labels = {"method": method, "status": str(status)}
    return metrics.registry.get_sample_value("http_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("path", "upstream_ms", "request_id"),
    [
        ("/item", 0.9, "0123456789abcdef0123456789abcdef"),
        ('/p\u00e9/"quoted"\\back\u2028\U0001f600', None, 'r"q\\d'),
        ("/", 12345.678, "x" * 200),
    ],
)
def test_direct_json_line_is_the_formatters_line(
    path: str, upstream_ms: float | None, request_id: str
) -> None:
    extra = {
        "method": "POST",
        "path": path,
        "status": 502,
        "duration_ms": 1.234,
        "upstream_ms": upstream_ms,
        "idempotency": "store_error",
        "request_id": request_id,
    }
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        1,
        "%s %s %s",
        ("POST", path, 502),
        None,
        extra=extra,
    )
    direct = access_json_line(
        "POST", path, 502, 1.234, upstream_ms, "store_error", request_id, record.created
    )
    assert direct == JsonFormatter().format(record)


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
