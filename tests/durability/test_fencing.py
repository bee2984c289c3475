"""A replica paused past its lease (SIGSTOP) cannot write over the replica that took over.

The paused process wakes up (SIGCONT) in the middle of a step call it started before the pause:
it stops with ``LeaseLost`` (its renewer sees the lease ran out while it was frozen, or the store
refuses the stale lease), logs that, and the rows the new owner wrote stay exactly as they were.
"""

from __future__ import annotations

import signal
from typing import Any

import aiohttp

from durability.conftest import Db, SagaCluster, eventually, log_events, saga, step
from durability.ledger import Ledger


async def snapshot(pg: Db, saga_id: str) -> tuple[Any, ...]:
    """Everything recorded about the saga."""
    return (await pg.instance(saga_id), await pg.steps(saga_id), await pg.attempts(saga_id))


async def test_replica_paused_past_its_lease_is_fenced_off_and_changes_nothing(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/first", first_delay=2.5)
    cluster.write_saga(saga("fenced", [step("first", "/first"), step("second", "/second")]))
    paused, other = cluster.start(), cluster.start()
    saga_id = await cluster.trigger(http, paused, "fenced", {"order": "F-1"})
    await eventually(lambda: ledger.calls_to("/first", saga_id), "first step called")
    claimed = await pg.instance(saga_id)
    paused.signal(signal.SIGSTOP)

    assert (await pg.wait_status(saga_id))["status"] == "completed"

    async def released() -> dict[str, Any] | None:
        row = await pg.instance(saga_id)
        return row if row["owner"] is None else None

    row = await eventually(released, "the new owner released the finished saga")
    assert row["lease_version"] > claimed["lease_version"]
    assert any(r.get("event") == "resume" for r in log_events(other, saga_id))
    settled = await snapshot(pg, saga_id)

    paused.signal(signal.SIGCONT)
    lost = await eventually(
        lambda: [r for r in log_events(paused, saga_id) if r.get("event") == "lease_lost"],
        "the paused replica reports its lease lost",
    )

    assert "is stale" in lost[0]["msg"] or "could not be renewed in time" in lost[0]["msg"]
    assert await snapshot(pg, saga_id) == settled
    assert len(ledger.calls_to("/second", saga_id)) == 1
    first_calls = ledger.calls_to("/first", saga_id)
    assert [c.key for c in first_calls] == [f"{saga_id}:first:action"] * 2
    assert paused.process.poll() is None, "the fenced replica keeps serving"
