"""A replica killed (``kill -9``) while an awaiting step's call is in flight, its service having
already called back: the recorded outcome survives the crash and decides the step once.

The service (the recording ledger behind an idempotent front sidecar, as in test_crash_resume)
posts the outcome to the call's ``Saga-Callback`` URL, the replica that makes the call, before
it answers; the test holds that answer until the replica is killed. Another replica resumes the
saga and re-sends the charge with the same ``Idempotency-Key``: the front answers it from its
store (the ledger executes the charge once), and the step ends as docs/SAGAS.md says for an
outcome that came before the action's own answer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import aiohttp
from conftest import Sidecar

from durability.conftest import Db, SagaCluster, eventually, kill
from durability.ledger import Ledger
from durability.test_await_crashes import applied_once, payment_saga
from durability.test_crash_resume import front_requests, idempotent_front

RESULT = {"capture": "cap-1"}


async def killed_mid_charge(
    cluster: SagaCluster,
    sidecar_process: Callable[..., Sidecar],
    http: aiohttp.ClientSession,
    pg: Db,
    ledger: Ledger,
    outcome: str,
    status: int = 200,
) -> tuple[str, Sidecar]:
    """Start a payment whose charge service calls back ``outcome`` and then answers ``status``;
    kill its replica while the charge is still unanswered, let the answer go, start another
    replica. Returns the saga's id and the front sidecar."""
    gate = threading.Event()
    body = {"outcome": outcome, "result": RESULT}
    ledger.script("/charge", status=status, gate=gate, call_back=body)
    front = idempotent_front(sidecar_process, cluster.ledger_url)
    cluster.services["shop"] = front.url
    cluster.write_saga(payment_saga())
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "payment", {"order": f"R-{outcome}-{status}"})
    await eventually(lambda: ledger.callback_answers, "the service called back mid-call")
    assert ledger.callback_answers == [202]
    charge = (await pg.steps(saga_id))[1]
    assert (charge["status"], charge["await_outcome"]) == ("running", outcome)

    kill(first)
    gate.set()
    cluster.start()
    return saga_id, front


def charged_once(ledger: Ledger, front: Sidecar, saga_id: str) -> None:
    """The resumed replica re-sent the charge with its key, answered from the front's store:
    the ledger executed it (and called back) once."""
    assert ledger.executions(f"{saga_id}:charge:action") == 1
    assert ledger.executions(f"{saga_id}:reserve:action") == 1
    assert sorted(r["idempotency"] for r in front_requests(front, "/charge")) == ["hit", "miss"]
    assert ledger.callback_answers == [202]


def undone_once(ledger: Ledger, saga_id: str) -> None:
    """The charge was refunded and the reservation released, once each; nothing shipped."""
    assert ledger.executions(f"{saga_id}:charge:compensation") == 1
    assert ledger.executions(f"{saga_id}:reserve:compensation") == 1
    assert not ledger.calls_to("/ship", saga_id)


async def test_a_success_called_back_before_a_crash_completes_the_resumed_saga_once(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    saga_id, front = await killed_mid_charge(cluster, sidecar_process, http, pg, ledger, "success")
    row = await pg.wait_status(saga_id)

    assert row["status"] == "completed", row["failure_reason"]
    charged_once(ledger, front, saga_id)
    assert ledger.executions(f"{saga_id}:ship:action") == 1
    assert not ledger.calls_to("/refund", saga_id) and not ledger.calls_to("/release", saga_id)
    steps = await pg.records.steps(saga_id)
    assert [s.status for s in steps] == ["succeeded"] * 3
    charge = steps[1]
    assert (charge.await_outcome, charge.await_result) == ("success", RESULT)
    assert isinstance(charge.result, dict)
    assert charge.result["body"] == RESULT  # steps.charge.body: the callback's result
    assert charge.retry_count == 2  # the resumed call counts as the second attempt


async def test_a_failure_called_back_before_a_crash_compensates_the_resumed_saga_once(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    saga_id, front = await killed_mid_charge(cluster, sidecar_process, http, pg, ledger, "failure")
    row = await pg.wait_status(saga_id)

    assert row["status"] == "compensated"
    assert row["failure_reason"] == "step charge: the service reported failure"
    charged_once(ledger, front, saga_id)
    undone_once(ledger, saga_id)
    steps = await pg.records.steps(saga_id)
    assert [s.status for s in steps] == ["compensated", "compensated", "pending"]
    assert (steps[1].await_outcome, steps[1].await_result) == ("failure", RESULT)


async def test_a_refusal_after_a_success_called_back_before_a_crash_compensates_the_step_once(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    saga_id, front = await killed_mid_charge(
        cluster, sidecar_process, http, pg, ledger, "success", status=422
    )
    row = await pg.wait_status(saga_id)

    assert row["status"] == "compensated", row["failure_reason"]
    assert row["failure_reason"] == "step charge: status 422"
    charged_once(ledger, front, saga_id)
    undone_once(ledger, saga_id)
    steps = await pg.records.steps(saga_id)
    assert [s.status for s in steps] == ["compensated", "compensated", "pending"]
    charge = steps[1]
    assert isinstance(charge.result, dict)
    assert charge.result["status"] == 422
    assert (charge.await_outcome, charge.await_result) == ("success", RESULT)
    assert charge.waiting_since is None  # it never waited


HOLD_CLAIMS = """
    CREATE FUNCTION hold_claim() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NEW; END $$;
    CREATE TRIGGER hold_claim BEFORE UPDATE ON saga_instances FOR EACH ROW
        WHEN (OLD.owner IS NULL AND NEW.owner IS NOT NULL) EXECUTE FUNCTION hold_claim();
"""
"""Makes every claim of a saga nobody owns wait for the advisory lock ``key`` the test holds."""

HELD = """
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND classid = 0 AND objid = $1 AND NOT granted"""
"""The sessions whose claim waits for the test's advisory lock."""


async def test_a_replica_killed_right_after_the_answer_of_a_called_back_step_leaves_it_due(
    cluster: SagaCluster,
    ledger: Ledger,
    pg: Db,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    # The service called back during the call; the replica is killed at its first stop after
    # the call's answer: giving the saga up and claiming it back (a claim held here), or the
    # ship call. Either way the saga must be due at once, not when the charge's 1 h wait ends.
    key = random.randrange(1, 2**31)
    await pg.conn.execute("SELECT pg_advisory_lock($1)", key)
    await pg.conn.execute(HOLD_CLAIMS.format(key=key))
    ship = threading.Event()
    ledger.script("/ship", gate=ship)
    ledger.script("/charge", call_back={"outcome": "success", "result": RESULT})
    cluster.services["shop"] = idempotent_front(sidecar_process, cluster.ledger_url).url
    cluster.write_saga(payment_saga())
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "payment", {"order": "R-park"})

    async def stopped() -> bool:
        return bool(ledger.calls_to("/ship", saga_id) or await pg.conn.fetch(HELD, key))

    await eventually(stopped, "the replica went on after the charge's answer")
    kill(first)
    for held in await pg.conn.fetch(HELD, key):
        await pg.conn.execute("SELECT pg_terminate_backend($1)", held["pid"])
    await pg.conn.execute("DROP TRIGGER hold_claim ON saga_instances")
    await pg.conn.execute("SELECT pg_advisory_unlock($1)", key)
    ship.set()
    cluster.start()
    row = await pg.wait_status(saga_id, within=10)

    assert row["status"] == "completed"
    applied_once(ledger, saga_id)
    steps = await pg.records.steps(saga_id)
    assert (steps[1].await_outcome, steps[1].await_result) == ("success", RESULT)
