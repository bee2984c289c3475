"""Sagas waiting for a callback survive ``kill -9``: a waiting saga is a row, so any replica
takes its callback and finishes it; a replica killed while it goes on after recording an
outcome leaves the saga to another, and every effect happens once.

Real sidecar processes on the test's PostgreSQL schema; the saga's service is an idempotent
front sidecar before the recording ledger (as in test_crash_resume), so a re-sent step is
applied once.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from conftest import Sidecar

from durability.conftest import Db, SagaCluster, eventually, kill, saga, step
from durability.ledger import Ledger
from durability.test_crash_resume import idempotent_front
from saga_runner.awaits import AwaitOutcome, Verdict, token_hash

CALLBACKS = "/_saga/callbacks"


def payment_saga() -> dict[str, Any]:
    """reserve -> charge (awaits a callback) -> ship, through the front sidecar."""
    charge = step("charge", "/charge", undo="/refund", service="shop")
    charge["await"] = {"callback": {"timeout": "1h"}}
    return saga(
        "payment",
        [
            step("reserve", "/reserve", undo="/release", service="shop"),
            charge,
            step("ship", "/ship", service="shop"),
        ],
    )


async def callback(
    http: aiohttp.ClientSession, sidecar: Sidecar, token: str, body: dict[str, Any]
) -> int:
    """POST a callback for ``token`` to ``sidecar``; its status."""
    async with http.post(f"{sidecar.url}{CALLBACKS}/{token}", json=body) as response:
        return response.status


async def waiting_token(ledger: Ledger, pg: Db, saga_id: str) -> str:
    """The charge's callback token, once the saga waits for it."""

    async def parked() -> bool:
        steps = await pg.steps(saga_id)
        return steps[1]["status"] == "waiting"

    await eventually(parked, "the charge waits for its callback")
    header = ledger.calls_to("/charge", saga_id)[0].callback
    assert header is not None
    return header.rsplit("/", 1)[1]


async def parked_payment(
    cluster: SagaCluster,
    sidecar_process: Callable[..., Sidecar],
    http: aiohttp.ClientSession,
    pg: Db,
    ledger: Ledger,
    order: str,
) -> tuple[Sidecar, str, str]:
    """A replica whose payment saga (through the idempotent front sidecar) waits for its
    charge's callback: the replica, the saga's id and the token."""
    cluster.services["shop"] = idempotent_front(sidecar_process, cluster.ledger_url).url
    cluster.write_saga(payment_saga())
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "payment", {"order": order})
    return first, saga_id, await waiting_token(ledger, pg, saga_id)


def applied_once(ledger: Ledger, saga_id: str) -> None:
    """Every action of the payment saga reached the ledger once."""
    for name in ("reserve", "charge", "ship"):
        assert ledger.executions(f"{saga_id}:{name}:action") == 1, name


async def test_a_replica_killed_while_its_saga_waits_leaves_it_to_the_one_called_back(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    first, saga_id, token = await parked_payment(cluster, sidecar_process, http, pg, ledger, "W-1")
    row = await pg.instance(saga_id)
    assert row["owner"] is None and row["lease_expires_at"] is None
    kill(first)

    second = cluster.start()
    assert await callback(http, second, token, {"outcome": "success", "result": {"c": 1}}) == 202
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed"
    applied_once(ledger, saga_id)
    assert await callback(http, second, token, {"outcome": "success"}) == 200


async def test_a_replica_killed_going_on_after_a_callback_leaves_the_saga_to_another(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    gate = threading.Event()
    ledger.script("/ship", gate=gate)
    first, saga_id, token = await parked_payment(cluster, sidecar_process, http, pg, ledger, "W-2")

    assert await callback(http, first, token, {"outcome": "success"}) == 202
    await eventually(lambda: ledger.calls_to("/ship", saga_id), "the ship call went out")
    assert (await pg.instance(saga_id))["owner"] is not None
    kill(first)
    cluster.start()
    gate.set()
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed"
    applied_once(ledger, saga_id)
    steps = await pg.steps(saga_id)
    assert [s["status"] for s in steps] == ["succeeded"] * 3
    assert steps[1]["await_outcome"] == "success"


async def test_a_recorded_outcome_whose_replica_died_before_going_on_is_resumed_by_recovery(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    first, saga_id, token = await parked_payment(cluster, sidecar_process, http, pg, ledger, "W-3")
    kill(first)
    # What a replica that died right after its commit leaves: the outcome, and the saga due.
    store = await pg.open_store()
    answer = await store.callback(token_hash(token), AwaitOutcome.FAILURE, {"code": "declined"})
    assert answer.verdict is Verdict.RECORDED

    cluster.start()
    row = await pg.wait_status(saga_id)

    assert row["status"] == "compensated"
    assert row["failure_reason"] == "step charge: the service reported failure"
    assert ledger.executions(f"{saga_id}:charge:compensation") == 1
    assert ledger.executions(f"{saga_id}:reserve:compensation") == 1
    assert not ledger.calls_to("/ship", saga_id)


async def test_a_replica_killed_while_its_saga_polls_leaves_the_schedule_to_another(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/settlement", failures=6, fail_status=503)
    settle = step("settle", "/settle", undo="/unsettle")
    settle["await"] = {
        "poll": {
            "path": "/settlement",
            "every": "300ms",
            "timeout": "1m",
            "success": {"field": "status", "in": [200]},
        }
    }
    cluster.write_saga(saga("settlement", [settle, step("book", "/book")]))
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "settlement", {"order": "P-1"})
    await eventually(lambda: len(ledger.calls_to("/settlement")) >= 2, "two polls")
    kill(first)

    cluster.start()
    row = await pg.wait_status(saga_id, within=20)

    assert row["status"] == "completed"
    assert ledger.executions(f"{saga_id}:settle:action") == 1
    assert ledger.executions(f"{saga_id}:book:action") == 1
    polls = ledger.calls_to("/settlement")
    assert len(polls) >= 7 and all(p.key is None for p in polls)
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
    assert min(gaps) >= 0.25, gaps  # every 300 ms, never hammered, the restart included
