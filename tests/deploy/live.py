"""A deployment run for real: the example overlay's sidecar on this machine, against real stores.

``LiveDeployment.start`` lays the overlay's ConfigMap out in a directory, adds one saga whose
compensation always fails, runs the migrate init container's command, then the sidecar
container's command twice: once healthy (Redis and PostgreSQL on this machine) and once with an
unreachable Redis. Both get the container's environment from the manifests, with the store URLs
(under a unique key prefix and schema), the listen addresses and the service URLs pointed at
this machine. ``drive`` sends the traffic that creates every labelled metric series.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import redis
from aiohttp import web

from deploy.manifests import (
    Obj,
    Rendered,
    command_container,
    config_path,
    container_env,
    host_path,
    local_args,
    mount_configmaps,
    pod_spec,
)
from deploy.tools import REPO_ROOT, clean_env, require_tool, run

START_TIMEOUT = 15.0

# A saga whose compensation can only fail: the orders service has no PUT (405), and one attempt.
DOOMED_SAGA = """
name: doomed
trigger: {method: POST, path: /api/v1/doomed}
mode: sync
business_id: "{{ input.order_no }}"
steps:
  - name: create_order
    action:
      service: orders
      method: POST
      path: /orders
      body: {order_no: "{{ input.order_no }}", amount: "{{ input.amount }}"}
    compensation:
      service: orders
      method: PUT
      path: "/orders/{{ steps.create_order.body.id }}"
      retry: {attempts: 1}
  - name: charge
    action:
      service: payments
      method: POST
      path: /payments
      body: {order_id: "{{ steps.create_order.body.id }}", amount: "{{ input.amount }}"}
"""


def demo_apps() -> dict[str, web.Application]:
    """The bundled demo services (demo/ is not an installed package): shop, orders, payments."""
    spec = importlib.util.spec_from_file_location("deploy_demo", REPO_ROOT / "demo" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        "shop": module.shop_app(),
        "orders": module.orders_app(),
        "payments": module.payments_app(),
    }


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Send one request; 4xx/5xx answers are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


@dataclass
class Process:
    """A ``saga-sidecar serve`` subprocess and its listener URLs."""

    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    log: Path

    def wait_healthy(self, path: str) -> None:
        """Wait until the admin listener answers ``path`` with 200."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sidecar exited:\n{self.log.read_text()}")
            try:
                if http("GET", self.admin_url + path).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"sidecar not healthy:\n{self.log.read_text()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (SIGKILL after ``timeout``); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def peak_rss_bytes(self) -> int:
        """Peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@dataclass
class LiveDeployment:
    """The example overlay's sidecar, healthy and with Redis down, plus what driving it gave."""

    rendered: Rendered
    rootfs: Path
    env: dict[str, str]
    free_port: Callable[[], int]
    redis_url: str
    database_url: str
    prefix: str = field(default_factory=lambda: f"deploy-{uuid.uuid4().hex[:12]}")
    schema: str = field(default_factory=lambda: f"deploy_{uuid.uuid4().hex[:12]}")
    processes: list[Process] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)
    migrate_output: str = ""

    @property
    def spec(self) -> Obj:
        """The pod spec."""
        return pod_spec(self.rendered.workload())

    @property
    def sidecar(self) -> Obj:
        """The container running ``saga-sidecar serve``."""
        return command_container(self.spec, "serve")[1]

    @property
    def config_file(self) -> Path:
        """Where the sidecar container's ``--config`` lives in the emulated filesystem."""
        return host_path(self.rootfs, config_path(self.sidecar))

    def prepare(self, upstreams: Mapping[str, str]) -> None:
        """Mount the ConfigMap, add the doomed saga, build the environment, run migrate."""
        mount_configmaps(self.rendered, self.spec, self.sidecar, self.rootfs)
        (self.config_file.parent / "doomed.saga.yaml").write_text(DOOMED_SAGA)
        self.env = {
            **container_env(self.rendered, self.sidecar),
            "REDIS_URL": with_query(self.redis_url, prefix=self.prefix),
            "DATABASE_URL": with_query(self.database_url, schema=self.schema),
            "UPSTREAM_URL": upstreams["shop"],
            "ORDERS_URL": upstreams["orders"],
            "PAYMENTS_URL": upstreams["payments"],
        }
        migrate = command_container(self.spec, "migrate")[1]
        args = local_args(migrate, self.rootfs)
        result = run([require_tool("saga-sidecar"), *args], env=clean_env(self.env))
        assert result.returncode == 0, result.stderr
        self.migrate_output = result.stdout

    def start(self, name: str, **overrides: str) -> Process:
        """Run the sidecar container's command on free loopback ports."""
        public, admin = f"127.0.0.1:{self.free_port()}", f"127.0.0.1:{self.free_port()}"
        env = {**self.env, "SIDECAR_LISTEN": public, "SIDECAR_ADMIN_LISTEN": admin, **overrides}
        args = local_args(self.sidecar, self.rootfs)
        log = self.rootfs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [require_tool("saga-sidecar"), *args],
                env=clean_env({**env, "PYTHONUNBUFFERED": "1"}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started = Process(process, f"http://{public}", f"http://{admin}", log)
        self.processes.append(started)
        started.wait_healthy(self.sidecar["startupProbe"]["httpGet"]["path"])
        return started

    def close(self) -> None:
        """Stop the sidecars, drop the schema, delete the Redis keys."""
        for process in self.processes:
            process.stop()
        asyncio.run(self._drop_schema())
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    async def _drop_schema(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


def drive(healthy: Process, broken: Process) -> dict[str, Reply]:
    """Traffic that creates every labelled series: pass-through, replay, and each saga outcome."""
    key = uuid.uuid4().hex
    charge = {"amount": 42}
    replies = {
        "pass_through": http("GET", healthy.url + "/hello"),
        "first": http("POST", healthy.url + "/charges", charge, {"Idempotency-Key": key}),
        "replay": http("POST", healthy.url + "/charges", charge, {"Idempotency-Key": key}),
        "completed": http(
            "POST",
            healthy.url + "/api/v1/payments",
            {"order_no": f"A-{key}", "amount": 120},
            {"Idempotency-Key": f"pay-{key}"},
        ),
        "compensated": http(
            "POST",
            healthy.url + "/api/v1/payments",
            {"order_no": f"B-{key}", "amount": 5000},
            {"Idempotency-Key": f"decline-{key}"},
        ),
        "failed": http(
            "POST", healthy.url + "/api/v1/doomed", {"order_no": f"C-{key}", "amount": 5000}
        ),
        "store_down": http("POST", broken.url + "/charges", charge, {"Idempotency-Key": key}),
    }
    return replies
