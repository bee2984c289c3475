"""A backoff persisted before a crash is honoured by the process that resumes the saga.

The step's upstream answers ``503`` with ``Retry-After: 3``; the sidecar records when the next
attempt is due (``next_retry_at`` on the step, ``next_run_at`` on the saga) and is killed while it
waits. The new process must not call the upstream before that time, then finishes the saga.
"""

from __future__ import annotations

import aiohttp

from durability.conftest import Db, SagaCluster, eventually, kill, saga, step
from durability.ledger import Ledger

RETRY_AFTER = 3


async def test_backoff_persisted_before_a_crash_is_honoured_by_the_next_process(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script(
        "/flaky", failures=1, fail_status=503, fail_headers={"Retry-After": str(RETRY_AFTER)}
    )
    patient = {"attempts": 3, "backoff": "10ms", "max_backoff": f"{RETRY_AFTER + 1}s"}
    cluster.write_saga(saga("patient", [step("flaky", "/flaky", retry=patient)]))
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "patient", {"order": "B-1"})

    async def backoff_persisted() -> bool:
        row, step_row = await pg.instance(saga_id), (await pg.steps(saga_id))[0]
        return row["next_run_at"] is not None and step_row["next_retry_at"] is not None

    await eventually(backoff_persisted, "next_run_at and next_retry_at persisted")
    kill(first)
    due = (await pg.steps(saga_id))[0]["next_retry_at"]
    assert (await pg.instance(saga_id))["next_run_at"] == due

    cluster.start()
    row = await pg.wait_status(saga_id, within=RETRY_AFTER + 10)

    assert row["status"] == "completed"
    calls = ledger.calls_to("/flaky", saga_id)
    assert len(calls) == 2
    assert calls[1].at >= due.timestamp()
    assert calls[1].at - calls[0].at >= RETRY_AFTER - 0.05
    attempts = await pg.attempts(saga_id)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 200)]
