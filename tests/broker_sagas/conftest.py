"""Fixtures of the broker-saga suite: the saga suite's in-process sidecar and stores, the
durability suite's real sidecar processes on a PostgreSQL schema (``cluster``, ``pg``,
``ledger``, ``http``), and the broker suite's real RabbitMQ and NATS servers, together.

Besides those (see ``sagas/conftest.py``, ``durability/conftest.py`` and ``brokers/conftest.py``):

Fixtures:
    worker        ``await worker(kind)``: a ``Worker`` consuming a fresh queue (RabbitMQ) or
                  subject (NATS) on the shared server, standing in for the service a step
                  publishes its work to; ``worker.to`` is where to publish.
    broker_proxy  ``(CuttableProxy, url)``: a proxy in front of the shared server of ``kind``
                  (started; closed after the test) and the broker URL that goes through it, to
                  cut the sidecar's way to the broker or hold the broker's answers back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
from brokers.conftest import (  # noqa: F401 (fixtures used by this suite's tests)
    KINDS,
    OpenBroker,
    Recorder,
    captured_logs,
    delete_callbacks,
    nats_server,
    nats_url,
    open_broker,
    rabbitmq_url,
    unique_name,
    wait_ready,
)
from durability.conftest import (  # noqa: F401 (fixtures used by this suite's tests)
    cluster,
    http,
    ledger,
    ledger_upstream,
    pg,
    records,
    store_kind,
)
from idempotency.cuttable import CuttableProxy
from sagas.conftest import client, database, make_sidecar, services  # noqa: F401

from saga_runner.brokers.base import BrokerAdapter


@dataclass
class Worker:
    """A consumer of the queue or subject ``to``: every message a step published to it."""

    to: str
    adapter: BrokerAdapter
    received: Recorder


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The broker kind the test runs on: ``rabbitmq`` or ``nats``."""
    return str(request.param)


@pytest.fixture
def broker_url(kind: str, rabbitmq_url: str, nats_url: str) -> str:  # noqa: F811
    """The shared server of ``kind``."""
    return rabbitmq_url if kind == "rabbitmq" else nats_url


@pytest.fixture
async def broker_proxy(broker_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    """A ``CuttableProxy`` in front of the shared server of ``kind``, and the URL through it."""
    shared = urlsplit(broker_url)
    proxy = CuttableProxy(shared.hostname or "127.0.0.1", shared.port or 0)
    await proxy.start()
    credentials = f"{shared.username}:{shared.password}@" if shared.username else ""
    try:
        yield proxy, urlunsplit(shared._replace(netloc=f"{credentials}127.0.0.1:{proxy.port}"))
    finally:
        await proxy.close()


@pytest.fixture
async def worker(
    open_broker: OpenBroker,  # noqa: F811
    unique_name: str,  # noqa: F811
    rabbitmq_url: str,  # noqa: F811
    nats_url: str,  # noqa: F811
) -> AsyncIterator[WorkerFactory]:
    """``await worker(kind, url=None)``: a consuming ``Worker`` on a fresh name; its queue or
    stream is deleted after the test (on the shared server)."""
    started: list[tuple[str, str, BrokerAdapter]] = []

    async def start(kind: str, url: str | None = None) -> Worker:
        to = f"{unique_name}-work-{len(started)}"
        adapter = await open_broker(kind, url=url, callbacks=to, name="worker")
        started.append((kind, to, adapter))
        received = Recorder()
        adapter.consume(received)
        await wait_ready(adapter)
        return Worker(to, adapter, received)

    yield start
    shared = {"rabbitmq": rabbitmq_url, "nats": nats_url}
    for kind, to, adapter in started:
        await adapter.close(grace=1)  # before its queue goes: nothing declares it again
        await delete_callbacks(kind, shared[kind], to)
