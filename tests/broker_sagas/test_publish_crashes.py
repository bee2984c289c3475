"""Steps that publish survive ``kill -9``: a publish in flight, a saga waiting for its message's
outcome, and a publishing compensation are taken over by another sidecar process, the message
is sent again with the same message id, and every effect happens once; the first copy's
callback token still completes the step. A step or compensation resumed after a crash during a
broker outage still has all its retries.

Real sidecar processes on the test's PostgreSQL schema (``durability.conftest``'s cluster), the
real RabbitMQ or NATS server, and a ``worker`` consuming what the steps publish. A publish in
flight is one the broker took but whose confirmation the ``broker_proxy`` holds back.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from conftest import Sidecar
from durability.conftest import Db, SagaCluster, eventually, kill, log_events, saga, step
from durability.ledger import Ledger
from durability.test_await_crashes import callback
from idempotency.cuttable import CuttableProxy

from broker_sagas.conftest import Worker, WorkerFactory
from saga_runner.awaits import AwaitOutcome, Verdict, token_hash
from saga_runner.brokers.base import Delivery

HELD = 30.0
"""Seconds the proxy holds the broker's answers back: the publish is in flight until the kill."""
TIMED_OUT = "not confirmed by the broker in 1s"


def shipping_saga(to: str, timeout: str = "20s", undo_attempts: int = 50) -> dict[str, Any]:
    """reserve (HTTP) -> ship (publishes to ``to``, awaits its outcome; its compensation
    publishes a cancellation there; each publish has ``timeout``) -> notify (HTTP)."""
    ship: dict[str, Any] = {
        "name": "ship",
        "action": {"publish": {"broker": "jobs", "to": to, "body": {"ship": "{{ input.order }}"}}},
        "compensation": {
            "publish": {"broker": "jobs", "to": to, "body": {"cancel": "{{ input.order }}"}},
            "retry": {"attempts": undo_attempts, "backoff": "20ms", "max_backoff": "200ms"},
        },
        "await": {"message": {"timeout": "1h"}},
        "retry": {"attempts": 3, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"},
        "timeout": timeout,
    }
    return saga(
        "shipping",
        [step("reserve", "/reserve", undo="/release"), ship, step("notify", "/notify")],
    )


@dataclass
class Shipping:
    """The test's shipping saga on real sidecar processes: its ``warehouse`` worker, and the
    broker reached directly or through ``proxy`` (whose answers a test may hold back)."""

    warehouse: Worker
    cluster: SagaCluster
    http: aiohttp.ClientSession
    pg: Db
    proxy: CuttableProxy
    urls: dict[bool, str]
    """The broker URL by whether it goes through ``proxy``."""
    callbacks: str

    async def start(self, *, proxied: bool = False) -> Sidecar:
        """A sidecar process on broker ``jobs``, once ``/readyz`` says it is connected."""
        jobs = {"url": self.urls[proxied], "callbacks": self.callbacks}
        sidecar = self.cluster.start(sagas={"brokers": {"jobs": jobs}})

        async def ready() -> bool:
            async with self.http.get(f"{sidecar.admin_url}/readyz") as response:
                return response.status == 200

        await eventually(ready, "the sidecar is connected to its broker")
        return sidecar

    async def trigger(self, sidecar: Sidecar, order: str) -> tuple[str, Delivery]:
        """Start a shipping saga through ``sidecar``: its id and the action's message."""
        saga_id = await self.cluster.trigger(self.http, sidecar, "shipping", {"order": order})
        (sent,) = await self.warehouse.received.wait_for(1)
        assert sent.message_id == f"{saga_id}:ship:action"
        return saga_id, sent

    async def ship_status(self, saga_id: str, status: str) -> None:
        """Wait until the saga's ``ship`` step is ``status``."""

        async def reached() -> bool:
            return bool((await self.pg.steps(saga_id))[1]["status"] == status)

        await eventually(reached, f"ship {status}", within=15)

    async def no_more(self, count: int) -> None:
        """After a moment for a late delivery, the worker has had exactly ``count`` messages."""
        await asyncio.sleep(1.0)
        assert len(self.warehouse.received.deliveries) == count, self.warehouse.received.ids()

    async def ship_errors(self, saga_id: str, kind: str) -> list[str | None]:
        """The errors of ship's recorded attempts of ``kind``, in order."""
        made = await self.pg.attempts(saga_id)
        return [a["error"] for a in made if a["step_order"] == 1 and a["kind"] == kind]

    async def crash_in_outage(self, sidecar: Sidecar, saga_id: str, kind: str) -> Sidecar:
        """Once ship's ``kind`` found the broker down (``proxy`` cut) more than 5 times, kill
        ``sidecar``; another process takes the saga over when the broker is back but slower
        than ship's 1 s timeout, and ``proxy`` is fast again once one attempt timed out."""

        async def down_a_while() -> bool:
            return len(await self.ship_errors(saga_id, kind)) > 5

        await eventually(down_a_while, f"ship's {kind} found the broker down")
        kill(sidecar)
        # The next process gets the saga only once the broker answers, and answers slowly.
        hold = "UPDATE saga_instances SET lease_expires_at = now() + $2::interval WHERE id = $1"
        await self.pg.conn.execute(hold, saga_id, timedelta(minutes=1))
        await self.proxy.restore()
        taker = await self.start(proxied=True)
        self.proxy.reply_delay = 2.0
        await self.pg.conn.execute(hold, saga_id, timedelta(0))

        async def timed_out() -> bool:
            return TIMED_OUT in await self.ship_errors(saga_id, kind)

        await eventually(timed_out, f"the resumed {kind} timed out", within=15)
        self.proxy.reply_delay = 0.0
        return taker


@pytest.fixture
async def shipping(
    kind: str,
    worker: WorkerFactory,
    broker_url: str,
    broker_proxy: tuple[CuttableProxy, str],
    unique_name: str,
    cluster: SagaCluster,
    http: aiohttp.ClientSession,
    pg: Db,
) -> Shipping:
    """The shipping saga written for the test's cluster, publishing to a fresh worker."""
    warehouse = await worker(kind)
    cluster.write_saga(shipping_saga(warehouse.to))
    proxy, proxied_url = broker_proxy
    urls = {False: broker_url, True: proxied_url}
    return Shipping(warehouse, cluster, http, pg, proxy, urls, unique_name)


def token(message: Delivery) -> str:
    """The callback token a published message carries."""
    found: str = message.headers["saga-callback-token"]
    return found


async def test_a_publish_in_flight_at_a_kill_is_sent_again_with_its_id_and_either_token_completes(
    kind: str, shipping: Shipping, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    first = await shipping.start(proxied=True)
    shipping.proxy.reply_delay = HELD  # the broker takes the message; its confirm never comes
    saga_id, sent = await shipping.trigger(first, "S-1")
    assert (await pg.steps(saga_id))[1]["status"] == "running"
    kill(first)

    second = await shipping.start()
    await shipping.ship_status(saga_id, "waiting")
    ship = (await pg.steps(saga_id))[1]
    assert ship["retry_count"] == 2  # the resumed publish is the second attempt
    events = [e.get("event") for e in log_events(second, saga_id)]
    assert "resending step with unknown outcome" in events
    received = shipping.warehouse.received
    if kind == "nats":
        # JetStream dropped the copy within its duplicate window: the worker has one message.
        receipt = json.loads(ship["result"])["body"]
        assert receipt == {"message_id": sent.message_id, "duplicate": True}
        await shipping.no_more(1)
    else:
        # RabbitMQ delivers the copy: the same message id, and the resumed attempt's own token.
        _, again = await received.wait_for(2)
        assert again.message_id == sent.message_id and again.body == sent.body
        assert token(again) != token(sent)
        await shipping.no_more(2)

    # The service applies the first copy it got and answers with that copy's token.
    assert await callback(http, second, token(sent), {"outcome": "success"}) == 202
    row = await pg.wait_status(saga_id)
    assert row["status"] == "completed"
    for name in ("reserve", "notify"):
        assert ledger.executions(f"{saga_id}:{name}:action") == 1, name
    for copy in received.deliveries[1:]:  # the copy's token names the same step
        assert await callback(http, second, token(copy), {"outcome": "success"}) == 200


async def test_an_answer_to_the_first_copy_that_came_while_no_sidecar_ran_is_not_lost(
    shipping: Shipping, ledger: Ledger, pg: Db
) -> None:
    first = await shipping.start(proxied=True)
    shipping.proxy.reply_delay = HELD
    saga_id, sent = await shipping.trigger(first, "S-4")
    kill(first)
    # The service answered the first copy before any sidecar resumed the saga (the replica
    # that took its answer runs no sagas, say): recorded against the step still ``running``.
    store = await pg.open_store()
    result = {"tracking": "T-4"}
    answer = await store.callback(token_hash(token(sent)), AwaitOutcome.SUCCESS, result)
    assert answer.verdict is Verdict.RECORDED

    await shipping.start()
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed"
    steps = await pg.steps(saga_id)
    assert [s["status"] for s in steps] == ["succeeded"] * 3
    assert json.loads(steps[1]["await_result"]) == result
    assert ledger.executions(f"{saga_id}:notify:action") == 1
    assert set(shipping.warehouse.received.ids()) == {sent.message_id}  # any copy: the same


async def test_a_sidecar_killed_while_its_saga_waits_for_the_message_leaves_it_to_another(
    shipping: Shipping, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    first = await shipping.start()
    saga_id, sent = await shipping.trigger(first, "S-2")
    await shipping.ship_status(saga_id, "waiting")
    kill(first)

    second = await shipping.start()
    outcome = {"outcome": "success", "result": {"tracking": "T-2"}}
    assert await callback(http, second, token(sent), outcome) == 202
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed"
    steps = await pg.steps(saga_id)
    assert [s["status"] for s in steps] == ["succeeded"] * 3
    assert steps[1]["retry_count"] == 1  # published once: the wait was recorded before the kill
    await shipping.no_more(1)
    for name in ("reserve", "notify"):
        assert ledger.executions(f"{saga_id}:{name}:action") == 1, name
    assert len(ledger.calls_to("/notify", saga_id)) == 1


async def test_a_publishing_compensation_in_flight_at_a_kill_is_sent_again_with_its_id(
    kind: str, shipping: Shipping, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/notify", status=409)
    first = await shipping.start(proxied=True)
    saga_id, sent = await shipping.trigger(first, "S-3")
    await shipping.ship_status(saga_id, "waiting")
    shipping.proxy.reply_delay = HELD  # from now on the broker's confirms never come back
    assert await callback(http, first, token(sent), {"outcome": "success"}) == 202
    _, undo = await shipping.warehouse.received.wait_for(2)  # notify refused: ship is undone
    assert undo.message_id == f"{saga_id}:ship:compensation"
    assert (await pg.instance(saga_id))["status"] == "compensating"
    kill(first)

    await shipping.start()
    row = await pg.wait_status(saga_id)

    assert row["status"] == "compensated"
    steps = await pg.steps(saga_id)
    assert [s["status"] for s in steps] == ["compensated", "compensated", "failed"]
    undos = [(a["attempt"], a["error"]) for a in await pg.attempts(saga_id)
             if a["kind"] == "compensation" and a["step_order"] == 1]  # fmt: skip
    assert undos == [(1, "attempt 1 got no answer: the run stopped during the call"), (2, None)]
    if kind == "nats":
        await shipping.no_more(2)  # the copy was dropped by JetStream
    else:
        _, _, again = await shipping.warehouse.received.wait_for(3)
        assert again.message_id == undo.message_id and again.body == undo.body
        await shipping.no_more(3)
    assert json.loads(undo.body) == {"cancel": "S-3"}
    assert ledger.executions(f"{saga_id}:reserve:compensation") == 1


async def test_a_step_resumed_after_a_broker_outage_still_has_its_retries(
    shipping: Shipping, pg: Db, http: aiohttp.ClientSession
) -> None:
    # ship's publish has 3 attempts; those that found the broker down, before the crash as
    # after it, use up none of them.
    shipping.cluster.write_saga(shipping_saga(shipping.warehouse.to, timeout="1s"))
    first = await shipping.start(proxied=True)
    await shipping.proxy.cut()
    saga_id = await shipping.cluster.trigger(http, first, "shipping", {"order": "S-5"})
    second = await shipping.crash_in_outage(first, saga_id, "action")
    await shipping.ship_status(saga_id, "waiting")  # retried: not failed and compensated

    errors = await shipping.ship_errors(saga_id, "action")
    assert errors[-2:] == [TIMED_OUT, None]
    assert all(e is not None and e.startswith("broker unavailable: ") for e in errors[:-2])
    sent = shipping.warehouse.received.deliveries[0]
    assert await callback(http, second, token(sent), {"outcome": "success"}) == 202
    assert (await pg.wait_status(saga_id))["status"] == "completed"


async def test_a_compensation_resumed_after_a_broker_outage_still_has_its_retries(
    shipping: Shipping, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/notify", status=409)
    saga = shipping_saga(shipping.warehouse.to, timeout="1s", undo_attempts=3)
    shipping.cluster.write_saga(saga)
    first = await shipping.start(proxied=True)
    saga_id, sent = await shipping.trigger(first, "S-6")
    await shipping.ship_status(saga_id, "waiting")
    await shipping.proxy.cut()
    assert await callback(http, first, token(sent), {"outcome": "success"}) == 202
    await shipping.crash_in_outage(first, saga_id, "compensation")
    row = await pg.wait_status(saga_id)

    assert row["status"] == "compensated"  # retried: not compensation_failed
    errors = await shipping.ship_errors(saga_id, "compensation")
    assert errors[-2:] == [TIMED_OUT, None]
    undo = shipping.warehouse.received.deliveries[-1]
    assert undo.message_id == f"{saga_id}:ship:compensation"
