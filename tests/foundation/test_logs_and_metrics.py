"""The public listener's middleware: access lines (JSON and text), metrics, problems, request ids.

Runs an in-process aiohttp app with ``public_middleware`` in front of handlers that answer,
fail or redirect, with ``setup_logging`` writing to a captured stream.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from proxy.app import public_middleware
from proxy.errors import UpstreamTimeout
from proxy.keys import IDEMPOTENCY_OUTCOME, UPSTREAM_SECONDS
from proxy.logs import JsonFormatter, access_json_line, access_log, setup_logging
from proxy.metrics import SidecarMetrics

ACCESS_FIELDS = [
    "ts",
    "level",
    "logger",
    "msg",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ms",
    "idempotency",
    "request_id",
]


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the logging module's state that ``setup_logging`` changes back after the test."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    root = logging.getLogger()
    handlers, level, access_level = root.handlers[:], root.level, access_log.level
    yield
    setup_logging("text", "warning")  # no more direct JSON writes to the captured stream
    root.handlers[:] = handlers
    root.setLevel(level)
    access_log.setLevel(access_level)
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)


def captured_logging(monkeypatch: pytest.MonkeyPatch, fmt: str, level: str = "info") -> io.StringIO:
    """``setup_logging(fmt, level)`` writing to a fresh in-memory stream."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    setup_logging(fmt, level)
    return stream


async def answer(request: web.Request) -> web.StreamResponse:
    request[UPSTREAM_SECONDS] = 0.002
    request[IDEMPOTENCY_OUTCOME] = "miss"
    return web.Response(text="ok")


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/elsewhere")


async def timeout(request: web.Request) -> web.StreamResponse:
    raise UpstreamTimeout("upstream did not answer within 1s")


async def crash(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("secret internals")


async def serve(aiohttp_client: Any, metrics: SidecarMetrics) -> Any:
    app = web.Application(middlewares=[public_middleware(metrics)])
    app.router.add_get("/ok/{tail:.*}", answer)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/timeout", timeout)
    app.router.add_get("/crash", crash)
    return await aiohttp_client(app)


async def access_lines(stream: io.StringIO) -> list[str]:
    await asyncio.sleep(0)  # lines of one loop iteration are written at its end
    logging.getLogger().handlers[0].flush()
    return [line for line in stream.getvalue().splitlines() if "saga_sidecar.access" in line]


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


@pytest.mark.usefixtures("restore_logging")
async def test_json_access_line_has_every_field_and_the_final_status(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = captured_logging(monkeypatch, "json")
    client = await serve(aiohttp_client, SidecarMetrics())
    async with client.get("/ok/a%20b?q=1", headers={"X-Request-Id": "rid-1"}) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "rid-1"
    (line,) = await access_lines(stream)
    entry = json.loads(line)
    assert list(entry) == ACCESS_FIELDS
    assert entry["level"] == "info"
    assert entry["msg"] == "GET /ok/a b 200"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/ok/a b", 200)
    assert entry["upstream_ms"] == 2.0
    assert entry["duration_ms"] >= 0
    assert (entry["idempotency"], entry["request_id"]) == ("miss", "rid-1")


@pytest.mark.usefixtures("restore_logging")
async def test_text_format_access_line(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = captured_logging(monkeypatch, "text")
    client = await serve(aiohttp_client, SidecarMetrics())
    async with client.get("/ok/x") as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    (line,) = await access_lines(stream)
    assert re.search(
        rf" INFO saga_sidecar.access GET /ok/x 200 duration_ms=[0-9.]+ request_id={request_id}$",
        line,
    )


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", ["warning", "info"])
async def test_access_lines_follow_the_access_loggers_level(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    stream = captured_logging(monkeypatch, "json", level)
    client = await serve(aiohttp_client, SidecarMetrics())
    access_log.setLevel(logging.WARNING)
    async with client.get("/ok/x") as response:
        assert response.status == 200
    assert await access_lines(stream) == []


@pytest.mark.usefixtures("restore_logging")
async def test_another_handler_gets_the_access_record_with_its_fields(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stream = captured_logging(monkeypatch, "json")
    logging.getLogger().addHandler(caplog.handler)  # a second handler beside the JSON one
    caplog.set_level(logging.INFO, logger=access_log.name)
    client = await serve(aiohttp_client, SidecarMetrics())
    async with client.get("/ok/x", headers={"X-Request-Id": "rid-2"}) as response:
        assert response.status == 200
    (record,) = [rec for rec in caplog.records if rec.name == access_log.name]
    assert (getattr(record, "request_id", None), getattr(record, "status", None)) == ("rid-2", 200)
    (line,) = await access_lines(stream)
    assert json.loads(line)["request_id"] == "rid-2"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("path", "status", "problem"),
    [("/redirect", 302, False), ("/timeout", 504, True), ("/crash", 500, True)],
)
async def test_failures_are_counted_and_logged_with_the_status_the_client_got(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, path: str, status: int, problem: bool
) -> None:
    stream = captured_logging(monkeypatch, "json")
    metrics = SidecarMetrics()
    client = await serve(aiohttp_client, metrics)
    async with client.get(path, allow_redirects=False) as response:
        assert response.status == status
        body = await response.text()
        is_problem = response.content_type == "application/problem+json"
        assert "secret internals" not in body
    assert is_problem == problem
    assert requests_total(metrics, "GET", status) == 1
    access = [json.loads(line) for line in await access_lines(stream)]
    assert [entry["status"] for entry in access] == [status]


def test_request_counts_by_method_and_status() -> None:
    metrics = SidecarMetrics()
    for method, status in [("GET", 200), ("GET", 200), ("PUT", 404), ("GET", 502)]:
        metrics.observe_request(method, status, 0.003)
    assert requests_total(metrics, "GET", 200) == 2
    assert requests_total(metrics, "PUT", 404) == 1
    assert requests_total(metrics, "GET", 502) == 1
    samples = {"le": "0.005"}
    assert metrics.registry.get_sample_value("http_request_duration_seconds_bucket", samples) == 4


def test_invented_methods_are_all_counted_as_other_in_one_series() -> None:
    metrics = SidecarMetrics()
    methods = [f"M{i}" for i in range(1100)]
    for method in [*methods, *methods, "PATCH"]:
        metrics.observe_request(method, 405, 0.001)
    assert requests_total(metrics, "_OTHER", 405) == 2200
    assert requests_total(metrics, "PATCH", 405) == 1
    assert requests_total(metrics, "M7", 405) == 0
    series = [s for f in metrics.registry.collect() if f.name == "http_requests" for s in f.samples]
    assert len(series) == 2
