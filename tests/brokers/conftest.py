"""Fixtures of the broker suite: adapters on the real RabbitMQ and NATS JetStream servers.

Broker URLs come from ``RABBITMQ_URL`` / ``NATS_URL`` when set, else the servers on 127.0.0.1
(guest/guest on :5672; :4222 with JetStream). A server that does not answer fails the test with
what to install or start; nothing is skipped. Every test uses its own queue, subject and stream
names and deletes what it created.

Fixtures:
    rabbitmq_url / nats_url     the shared servers.
    unique_name                 ``saga-test-<hex>``, fresh per test.
    open_broker                 ``await open_broker(kind, url=None, callbacks=None, name=None,
                                **settings)``:
                                an opened adapter (``kind``: ``rabbitmq`` or ``nats``), closed after
                                the test, its callbacks queue/stream deleted.
    kind                        ``rabbitmq`` or ``nats``: the contract suite runs on both.
    broker                      a connected adapter of that kind on a fresh callbacks name.
    nats_server                 ``nats_server(jetstream=True)``: a private ``nats-server`` on its
                                own port and store directory that the test may kill and start
                                again.
    captured_logs               every log record of the test, at DEBUG and above, as text.

Helpers: ``logged(records, text)`` waits until the sidecar logged ``text``.
    make_sidecar, services, database, client
                                the saga suite's in-process sidecar and its fake services
                                (``tests/sagas/conftest.py``), for completion messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import nats
import nats.js.errors
import pytest
from conftest import find_free_port
from sagas.conftest import client, database, make_sidecar, services  # noqa: F401  (shared)

from saga_runner.brokers.base import BrokerAdapter, BrokerSettings, Delivery, PublishReceipt
from saga_runner.brokers.jetstream import stream_name
from saga_runner.brokers.registry import adapter_for
from saga_runner.errors import PublishRefused

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
KINDS = ["rabbitmq", "nats"]
# NATS: a delivery sent to a consumer that just went away comes back after ack_wait; 5 s, not 30.
FAST = {"retry_delay": 0.05, "publish_timeout": 3.0, "ack_wait": 5.0}

OpenBroker = Callable[..., Awaitable[BrokerAdapter]]


def _require(url: str, what: str, remedy: str) -> str:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2).close()
    except OSError as exc:
        pytest.fail(f"No {what} at {url} ({exc}): {remedy}")
    return url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The RabbitMQ server tests use (``$RABBITMQ_URL`` or guest@127.0.0.1:5672)."""
    url = os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    remedy = "start it, set RABBITMQ_URL, or install rabbitmq-server (make test starts one)"
    return _require(url, "RabbitMQ", remedy)


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The NATS JetStream server tests use (``$NATS_URL`` or 127.0.0.1:4222)."""
    url = os.environ.get("NATS_URL") or DEFAULT_NATS_URL
    remedy = "start nats-server -js, set NATS_URL, or install nats-server (make test starts one)"
    return _require(url, "NATS", remedy)


@pytest.fixture
def unique_name() -> str:
    """A queue/subject name no other test uses."""
    return f"saga-test-{uuid.uuid4().hex[:12]}"


async def delete_callbacks(kind: str, url: str, callbacks: str) -> None:
    """Delete the queue (RabbitMQ) or the stream (NATS) a consumer of ``callbacks`` created."""
    if kind == "rabbitmq":
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(callbacks)
        return
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(stream_name(callbacks))
    finally:
        await nc.close()


@pytest.fixture
async def open_broker(
    rabbitmq_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[OpenBroker]:
    """``await open_broker(kind, url=None, callbacks=None, name=None, **settings)``; closed
    afterwards."""
    opened: list[tuple[str, str, BrokerAdapter]] = []  # kind, url, adapter
    defaults = {"rabbitmq": rabbitmq_url, "nats": nats_url}

    async def start(
        kind: str,
        url: str | None = None,
        callbacks: str | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> BrokerAdapter:
        on_rejected = settings.pop("on_rejected", lambda reason: None)
        broker_url = url or defaults[kind]
        adapter = adapter_for(
            name or f"{kind}-test",
            BrokerSettings(
                url=broker_url, callbacks=callbacks or unique_name, **{**FAST, **settings}
            ),
            on_rejected,
        )
        opened.append((kind, broker_url, adapter))
        await adapter.open()
        return adapter

    yield start
    for _, _, adapter in reversed(opened):
        await adapter.close(grace=1)
    for kind in {kind for kind, _, _ in opened}:  # on the shared server, proxied or not
        await delete_callbacks(kind, defaults[kind], unique_name)


async def wait_ready(adapter: BrokerAdapter, seconds: float = 15.0) -> None:
    """Return once ``adapter.ready()`` passes; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await adapter.ready()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def publish_when_consumed(
    adapter: BrokerAdapter,
    body: bytes,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
    to: str | None = None,
    seconds: float = 15.0,
) -> PublishReceipt:
    """Publish to the adapter's callbacks once its consumer has declared the queue/stream
    (until then the broker refuses it: nothing takes that routing key or subject yet)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await adapter.publish(
                to or adapter.callbacks, body, headers or {}, message_id or uuid.uuid4().hex
            )
        except PublishRefused:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class Recorder:
    """A consume handler that records every delivery and can be told how to answer."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: list[BaseException | None] = []
        self.gate: asyncio.Event | None = None
        self._changed = asyncio.Condition()

    async def __call__(self, delivery: Delivery) -> None:
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer

    async def wait_for(self, count: int, seconds: float = 15.0) -> list[Delivery]:
        """Wait until ``count`` deliveries were handled (started); return them all."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.deliveries) >= count), seconds
            )
        return list(self.deliveries)

    def ids(self) -> list[str | None]:
        """The message ids handled, in order."""
        return [delivery.message_id for delivery in self.deliveries]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Which broker the contract test runs against: ``rabbitmq`` or ``nats``."""
    name: str = request.param
    return name


@pytest.fixture
async def broker(kind: str, open_broker: OpenBroker) -> BrokerAdapter:
    """A connected adapter of each kind on a fresh callbacks queue/subject."""
    adapter = await open_broker(kind)
    await wait_ready(adapter)
    return adapter


class NatsServer:
    """A private ``nats-server`` with JetStream on a fixed port and store directory."""

    def __init__(self, port: int, store: Path, log: Path, *, jetstream: bool = True) -> None:
        self.port = port
        self.jetstream = jetstream
        self.store = store
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://`` URL of this server."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.fail("nats-server is not installed (apt-get install nats-server)")
        with self.log.open("ab") as log:
            js = ["-js", "-sd", str(self.store)] if self.jetstream else []
            self.process = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port), *js],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            time.sleep(0.05)
        raise AssertionError(f"nats-server did not listen:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM the server, as a restart does, and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL the server (its JetStream store stays on disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """``nats_server(jetstream=True)``: a private server (not started yet); killed after the
    test."""
    servers: list[NatsServer] = []

    def make(jetstream: bool = True) -> NatsServer:
        index = len(servers)
        server = NatsServer(
            find_free_port(), tmp_path / f"nats-{index}", tmp_path / "nats.log", jetstream=jetstream
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record emitted during the test (all loggers, DEBUG and above)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler = Keep(logging.DEBUG)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


async def logged(
    records: list[logging.LogRecord], text: str, times: int = 1, within: float = 30
) -> None:
    """Wait until the sidecar logged ``text`` ``times`` times (other libraries' records may not
    render any more: aio-pika's name callbacks it has since torn down)."""
    deadline = time.monotonic() + within
    while sum(text in r.getMessage() for r in records if r.name.startswith("saga_sidecar")) < times:
        assert time.monotonic() < deadline, f"not logged {times} times: {text}"
        await asyncio.sleep(0.05)
