"""The configured brokers inside the sidecar: opened with the app, named by ``/readyz`` while down,
their callbacks consumed, rejected completions counted in ``/metrics``, and nothing else held up
by a broker outage."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from conftest import Sidecar, Upstream, find_free_port
from idempotency.cuttable import CuttableProxy

from brokers.conftest import NatsServer, delete_callbacks, publish_when_consumed
from proxy.app import SidecarApps, build_apps
from proxy.config import LoadedConfig, SidecarConfig
from proxy.keys import BROKERS
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER

Serve = Callable[..., Awaitable[Upstream]]


@dataclass
class InProcess:
    """A sidecar's two apps served in the test's loop."""

    apps: SidecarApps
    public_url: str
    admin_url: str

    async def get(self, url: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            body = await response.json(content_type=None)
            return response.status, body

    async def failing(self) -> dict[str, str]:
        """What ``/readyz`` names as not ready ({} when it answers 200)."""
        status, body = await self.get(f"{self.admin_url}/readyz")
        if status == 200:
            return {}
        assert status == 503, body
        failing: dict[str, str] = body["failing"]
        return failing

    async def wait_failing(self, names: set[str], seconds: float = 20.0) -> dict[str, str]:
        """Wait until exactly ``names`` are reported not ready."""
        deadline = time.monotonic() + seconds
        while True:
            failing = await self.failing()
            if set(failing) == names or time.monotonic() > deadline:
                assert set(failing) == names, failing
                return failing
            await asyncio.sleep(0.1)


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def start(
    tmp_path: Path, upstream_server: Serve, brokers: dict[str, dict[str, str]]
) -> InProcess:
    app = web.Application()
    app.router.add_get("/hello", hello)
    upstream = await upstream_server(app)
    config = SidecarConfig.model_validate(
        {
            "upstream": {"url": upstream.url},
            "sagas": {
                "store": f"sqlite:///{tmp_path / 'sagas.db'}",
                "definitions": [],
                "brokers": brokers,
            },
        }
    )
    apps = build_apps(LoadedConfig(path=tmp_path / "sidecar.yaml", config=config))
    public = await upstream_server(apps.public)
    admin = await upstream_server(apps.admin)
    return InProcess(apps, public.url, admin.url)


def via(proxy: CuttableProxy, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
    )


async def test_readyz_names_each_broker_while_it_is_down_and_nothing_else_stops(
    tmp_path: Path,
    upstream_server: Serve,
    rabbitmq_url: str,
    unique_name: str,
    nats_server: Callable[[], NatsServer],
) -> None:
    shared = urlsplit(rabbitmq_url)
    proxy = CuttableProxy(shared.hostname or "127.0.0.1", shared.port or 5672)
    await proxy.start()
    nats = nats_server()  # not started yet: down when the sidecar starts
    try:
        sidecar = await start(
            tmp_path,
            upstream_server,
            {
                "jobs": {"url": via(proxy, rabbitmq_url), "callbacks": unique_name},
                "events": {"url": nats.url, "callbacks": unique_name},
            },
        )
        failing = await sidecar.wait_failing({"broker:events"})
        assert "cannot connect" in failing["broker:events"]
        assert await sidecar.get(f"{sidecar.public_url}/hello") == (200, {"hello": "world"})
        assert (await sidecar.get(f"{sidecar.admin_url}/healthz"))[0] == 200

        nats.start()
        await sidecar.wait_failing(set())

        await proxy.cut()
        failing = await sidecar.wait_failing({"broker:jobs"})
        assert "connection lost" in failing["broker:jobs"]
        assert await sidecar.get(f"{sidecar.public_url}/hello") == (200, {"hello": "world"})
        await proxy.restore()
        await sidecar.wait_failing(set())
    finally:
        await proxy.close()
        await delete_callbacks("rabbitmq", rabbitmq_url, unique_name)


async def test_a_rejected_completion_is_counted_by_reason_in_metrics(
    tmp_path: Path, upstream_server: Serve, rabbitmq_url: str, unique_name: str
) -> None:
    sidecar = await start(
        tmp_path, upstream_server, {"jobs": {"url": rabbitmq_url, "callbacks": unique_name}}
    )
    try:
        await sidecar.wait_failing(set())
        # The sidecar's own consumer of the callbacks queue takes it.
        jobs = sidecar.apps.public[BROKERS]["jobs"]
        await publish_when_consumed(jobs, b"not json", {CALLBACK_TOKEN_HEADER: "t"})
        line = 'saga_callback_rejected_total{reason="bad_json"} 1.0'
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{sidecar.admin_url}/metrics") as response,
            ):
                text = await response.text()
            if line in text:
                break
            await asyncio.sleep(0.1)
        assert line in text
    finally:
        await delete_callbacks("rabbitmq", rabbitmq_url, unique_name)


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_sidecar_whose_broker_is_down_serves_reports_it_and_stops_promptly(
    sidecar_process: Callable[..., Sidecar],
) -> None:
    port = find_free_port()
    sidecar = sidecar_process(
        {
            "upstream": {"url": f"http://127.0.0.1:{find_free_port()}"},
            "sagas": {
                "store": "sqlite:///sagas.db",
                "definitions": [],
                "brokers": {
                    "jobs": {"url": f"amqp://guest:pw@127.0.0.1:{port}/", "callbacks": "q"}
                },
            },
        }
    )
    assert status_of(f"{sidecar.admin_url}/healthz")[0] == 200
    status, body = status_of(f"{sidecar.admin_url}/readyz")
    assert status == 503
    assert "broker:jobs" in body
    assert "pw@" not in body
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.process.wait(15) == 0
    assert time.monotonic() - started < 10
