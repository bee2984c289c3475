"""``workers: N``: N processes share the public listener; worker 0's /metrics counts the whole pod;
SIGTERM drains every worker; a worker that dies takes the pod down with exit 1."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.version import version
from proxy.workers import merge_expositions

if TYPE_CHECKING:
    from conftest import Sidecar


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def sample_value(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in the exposition")


class SlowApp:
    """``/fast`` answers at once; ``/slow`` after ``delay`` seconds, flagging its arrival."""

    def __init__(self, delay: float = 1.5) -> None:
        self.delay = delay
        self.arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/fast", self.fast)
        self.app.router.add_get("/slow", self.slow)

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")

    async def slow(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await asyncio.sleep(self.delay)
        return web.Response(text="finally")


async def two_workers(
    upstream_server: Callable[..., Any],
    sidecar_process: Callable[..., Sidecar],
    redis_url: str,
    delay: float = 1.5,
) -> tuple[SlowApp, Sidecar]:
    slow = SlowApp(delay)
    upstream = await upstream_server(slow.app, handler_cancellation=True)
    store = f"{redis_url}?prefix=workers-{uuid.uuid4().hex[:8]}"
    sidecar = sidecar_process(
        {"upstream": {"url": upstream.url}, "workers": 2, "idempotency": {"store": store}}
    )
    deadline = time.monotonic() + 5
    while len(children(sidecar.pid)) < 2:
        assert time.monotonic() < deadline, sidecar.log_text()
        await asyncio.sleep(0.05)
    return slow, sidecar


async def wait_for_exit(sidecar: Sidecar, within: float) -> int:
    deadline = time.monotonic() + within
    while sidecar.process.poll() is None:
        assert time.monotonic() < deadline, f"sidecar still running:\n{sidecar.log_text()}"
        await asyncio.sleep(0.02)
    return sidecar.process.returncode


async def test_two_workers_share_the_listener_and_metrics_count_every_request_once(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar], redis_url: str
) -> None:
    _, sidecar = await two_workers(upstream_server, sidecar_process, redis_url)
    workers = children(sidecar.pid)
    before = {pid: cpu_ns(pid) for pid in workers}
    for _ in range(300):  # a new connection each: the kernel spreads them over both sockets
        async with aiohttp.ClientSession() as session, session.get(f"{sidecar.url}/fast") as r:
            assert await r.text() == "fast"
    busy = [pid for pid in workers if cpu_ns(pid) - before[pid] > 20_000_000]
    assert busy == workers, "both workers should have served requests"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sidecar.admin_url}/metrics") as response,
    ):
        text = await response.text()
    labels = {"method": "GET", "status": "200"}
    assert sample_value(text, "http_requests_total", labels) == 300
    assert sample_value(text, "http_request_duration_seconds_count", {}) == 300
    assert sample_value(text, "upstream_request_duration_seconds_count", {}) == 300
    assert sample_value(text, "saga_sidecar_build_info", {"version": version()}) == 1
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the workers inherit it
    assert sample_value(text, "process_max_fds", {}) == soft_limit
    biggest = max(rss_bytes(pid) for pid in workers)
    assert sample_value(text, "process_resident_memory_bytes", {}) > 1.5 * biggest


async def test_sigterm_drains_in_flight_requests_in_every_worker_then_exits_0(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar], redis_url: str
) -> None:
    slow, sidecar = await two_workers(upstream_server, sidecar_process, redis_url)
    workers = children(sidecar.pid)

    async def get_slow() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(f"{sidecar.url}/slow") as r:
            return r.status, await r.text()

    in_flight = [asyncio.create_task(get_slow()) for _ in range(6)]
    await asyncio.wait_for(slow.arrived.wait(), 5)
    await asyncio.sleep(0.2)
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.gather(*in_flight) == [(200, "finally")] * 6
    assert await wait_for_exit(sidecar, within=5) == 0
    assert not any(alive(pid) for pid in workers)
    messages = [record.get("msg") for record in sidecar.log_records()]
    assert messages.count("stopped") == 2


async def test_a_worker_that_dies_stops_the_other_and_the_pod_exits_1(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar], redis_url: str
) -> None:
    _, sidecar = await two_workers(upstream_server, sidecar_process, redis_url)
    first, second = children(sidecar.pid)
    os.kill(second, signal.SIGKILL)
    assert await wait_for_exit(sidecar, within=5) == 1
    assert not alive(first)


def test_merged_metrics_sum_per_process_samples_and_take_the_max_of_store_gauges() -> None:
    one = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="GET",status="200"} 3.0\n'
        "# TYPE saga_oldest_unfinished_age_seconds gauge\n"
        "saga_oldest_unfinished_age_seconds 7.0\n"
        "# TYPE saga_in_flight gauge\n"
        'saga_in_flight{saga="pay"} 1.0\n'
    )
    two = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="GET",status="200"} 4.0\n'
        'http_requests_total{method="POST",status="201"} 1.0\n'
        "# TYPE saga_oldest_unfinished_age_seconds gauge\n"
        "saga_oldest_unfinished_age_seconds 5.0\n"
        "# TYPE saga_in_flight gauge\n"
        'saga_in_flight{saga="pay"} 2.0\n'
    )
    merged = merge_expositions([one, two]).decode()
    assert sample_value(merged, "http_requests_total", {"method": "GET", "status": "200"}) == 7
    assert sample_value(merged, "http_requests_total", {"method": "POST", "status": "201"}) == 1
    assert sample_value(merged, "saga_oldest_unfinished_age_seconds", {}) == 7
    assert sample_value(merged, "saga_in_flight", {"saga": "pay"}) == 3


def test_merged_metrics_take_the_max_of_gauges_every_worker_reports_alike() -> None:
    def worker(rss: float, started: float) -> str:
        return (
            "# TYPE saga_sidecar_build_info gauge\n"
            'saga_sidecar_build_info{version="1.2.3"} 1.0\n'
            "# TYPE process_max_fds gauge\n"
            "process_max_fds 1024.0\n"
            "# TYPE process_start_time_seconds gauge\n"
            f"process_start_time_seconds {started}\n"
            "# TYPE process_resident_memory_bytes gauge\n"
            f"process_resident_memory_bytes {rss}\n"
        )

    merged = merge_expositions([worker(5e7, 100.0), worker(7e7, 101.5)]).decode()
    assert sample_value(merged, "saga_sidecar_build_info", {"version": "1.2.3"}) == 1
    assert sample_value(merged, "process_max_fds", {}) == 1024
    assert sample_value(merged, "process_start_time_seconds", {}) == 101.5
    assert sample_value(merged, "process_resident_memory_bytes", {}) == 1.2e8
