"""A broker that goes away while a consumer runs: nothing lost, nothing applied twice.

NATS: a private ``nats-server`` (JetStream on its own store directory) is killed with SIGKILL and
started again. RabbitMQ: the shared server is not restarted (other suites use it); instead the
server closes the adapter's connection (``rabbitmqctl close_connection``, what a node shutting down
does to its clients), or a TCP proxy in front of it drops every connection and refuses new ones
for a while, which is what the client sees of a restart. In every case messages acknowledged
before the outage are never delivered again, the one being handled during it is delivered again
when its ack was lost (NATS may deliver the ack it buffered) and applied once, messages published
after it arrive once, ``ready`` reports the outage and then the recovery, and a publish during the
outage fails at once and succeeds when retried with the same id.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from idempotency.cuttable import CuttableProxy

from brokers.conftest import (
    NatsServer,
    OpenBroker,
    Recorder,
    logged,
    publish_when_consumed,
    wait_ready,
)
from saga_runner.brokers.base import BrokerAdapter, Delivery
from saga_runner.errors import BrokerUnavailable


class Ledger(Recorder):
    """A handler that applies each message id once (as the engine records an outcome once)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: Counter[str] = Counter()

    async def __call__(self, delivery: Delivery) -> None:
        await super().__call__(delivery)
        assert delivery.message_id is not None
        if delivery.message_id not in self.applied:
            self.applied[delivery.message_id] += 1


async def wait_down(adapter: BrokerAdapter, seconds: float = 60.0) -> str:
    """Wait until ``ready`` reports the broker down; return what it said.

    Watching starts before the outage is staged, and staging one can take long on a loaded
    machine (two ``rabbitmqctl`` runs, each an Erlang VM start), so the limit is generous.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await adapter.ready()
        except BrokerUnavailable as exc:
            return str(exc)
        await asyncio.sleep(0.02)
    raise AssertionError("the outage was never reported")


async def publish_retrying(adapter: BrokerAdapter, message_id: str, seconds: float = 20) -> None:
    """Publish, retrying with the same id while the broker is unavailable (as a step would)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await adapter.publish(adapter.callbacks, b"{}", {}, message_id)
            return
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_outage(
    adapter: BrokerAdapter,
    stop: Callable[[], Awaitable[None]],
    start: Callable[[], Awaitable[None]],
    in_flight_deliveries: set[int],
    held: bool = True,
    seen_down: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Consume through an outage staged by ``stop``/``start`` and check what was delivered.

    ``held``: the broker stays away until ``start`` (a server-side close does not: the client
    reconnects by itself within a second, maybe before ``stop`` has returned).

    ``seen_down``: how to learn that the outage happened, once ``stop`` returned (default:
    ``ready`` is watched while it is staged); it returns what reported it.

    ``in_flight_deliveries``: how often the message being handled during the outage may be
    delivered (2 when its ack is lost with the connection; NATS may also deliver the ack it
    buffered once it has reconnected, and then the message only once).
    """
    ledger = Ledger()
    adapter.consume(ledger)
    await publish_when_consumed(adapter, b"{}", message_id="before-0")
    for n in range(1, 5):
        await adapter.publish(adapter.callbacks, b"{}", {}, f"before-{n}")
    await ledger.wait_for(5)
    await asyncio.sleep(0.5)  # their acks reach the broker

    ledger.gate = asyncio.Event()  # the next delivery is being handled when the broker goes
    await adapter.publish(adapter.callbacks, b"{}", {}, "in-flight")
    await ledger.wait_for(6)
    watching = None if seen_down is not None else asyncio.create_task(wait_down(adapter))
    await stop()
    reported = await (watching if seen_down is None else seen_down())
    if held:  # still down: a publish fails at once
        with pytest.raises(BrokerUnavailable):
            await adapter.publish(adapter.callbacks, b"{}", {}, "after-0")
    ledger.gate.set()  # its handler returns while the broker is away: the ack cannot be sent
    await asyncio.sleep(0.3)
    ledger.gate = None

    await start()
    await wait_ready(adapter, 30)
    for n in range(5):
        await publish_retrying(adapter, f"after-{n}")
    await ledger.wait_for(5 + 1 + 5, seconds=30)
    await asyncio.sleep(adapter_quiet(adapter))

    assert "connection lost" in reported or "cannot connect" in reported, reported
    delivered = Counter(ledger.ids())
    expected = {f"before-{n}" for n in range(5)} | {f"after-{n}" for n in range(5)}
    assert {key: delivered[key] for key in expected} == dict.fromkeys(expected, 1)
    assert delivered["in-flight"] in in_flight_deliveries
    again = [d.redelivered for d in ledger.deliveries if d.message_id == "in-flight"][1:]
    assert again == [True] * (delivered["in-flight"] - 1)
    assert ledger.applied == Counter(dict.fromkeys([*expected, "in-flight"], 1))
    assert len(ledger.deliveries) == 10 + delivered["in-flight"]


def adapter_quiet(adapter: BrokerAdapter) -> float:
    """How long to watch for a stray redelivery: past a NATS test consumer's 2 s ack wait."""
    return 3.0 if type(adapter).__name__.startswith("JetStream") else 1.0


async def test_a_nats_server_killed_and_restarted_loses_nothing_and_applies_nothing_twice(
    open_broker: OpenBroker, nats_server: Callable[[], NatsServer]
) -> None:
    server = nats_server()
    server.start()
    adapter = await open_broker("nats", url=server.url, ack_wait=2.0)
    await wait_ready(adapter)

    async def stop() -> None:
        server.kill()

    async def start() -> None:
        server.start()

    await run_outage(adapter, stop, start, in_flight_deliveries={1, 2})


async def test_rabbitmq_connections_dropped_lose_nothing_and_apply_nothing_twice(
    open_broker: OpenBroker, rabbitmq_url: str
) -> None:
    shared = urlsplit(rabbitmq_url)
    proxy = CuttableProxy(shared.hostname or "127.0.0.1", shared.port or 5672)
    await proxy.start()
    try:
        via_proxy = shared._replace(
            netloc=f"{shared.username}:{shared.password}@127.0.0.1:{proxy.port}"
        )
        adapter = await open_broker("rabbitmq", url=urlunsplit(via_proxy))
        await wait_ready(adapter)
        await run_outage(adapter, proxy.cut, proxy.restore, in_flight_deliveries={2})
    finally:
        await proxy.close()


def close_from_server(connection_name: str) -> None:
    """Have RabbitMQ close the connection named ``connection_name`` (CONNECTION_FORCED)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.fail("rabbitmqctl is not installed (apt-get install rabbitmq-server)")
    listed = subprocess.run(
        [rabbitmqctl, "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    pids = [
        line.split("\t", 1)[0] for line in listed.stdout.splitlines() if connection_name in line
    ]
    assert len(pids) == 1, listed.stdout
    subprocess.run(
        [rabbitmqctl, "-q", "close_connection", pids[0], "test: server-side close"],
        capture_output=True,
        check=True,
        timeout=30,
    )


async def test_rabbitmq_closing_the_connection_from_the_server_loses_nothing(
    open_broker: OpenBroker,
    unique_name: str,
    rabbitmq_url: str,
    captured_logs: list[logging.LogRecord],
) -> None:
    if urlsplit(rabbitmq_url).hostname not in ("127.0.0.1", "localhost"):
        pytest.fail(f"rabbitmqctl reaches only the local node, and RABBITMQ_URL is {rabbitmq_url}")
    adapter = await open_broker("rabbitmq", name=unique_name)
    await wait_ready(adapter)

    async def stop() -> None:
        await asyncio.to_thread(close_from_server, f"saga-sidecar broker {unique_name}")

    async def start() -> None:
        """The robust connection reconnects by itself."""

    async def seen_down() -> str:
        # The client reconnects within a second, maybe long before rabbitmqctl returns on a
        # loaded machine (watching ready() missed it): the outage is read from the log.
        text = f"broker {unique_name}: connection lost"
        await logged(captured_logs, text)
        return text

    await run_outage(
        adapter, stop, start, in_flight_deliveries={2}, held=False, seen_down=seen_down
    )
