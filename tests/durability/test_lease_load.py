"""Fifty sagas per replica with a 1 s lease on a starved CPU: no lease is lost, no step re-sent.

Two sidecar processes (default pool of 10 connections) each run 50 sagas at once whose steps
take several leases, while a busy-looping process per CPU starves them. Each replica's one lease
renewer must keep every lease: a lapse would let the other replica (or the same one's recovery
loop) claim the saga and send its step again. The CPU is starved once the sagas are created:
a lease whose creation alone outlasts it (a burst of triggers on a starved CPU) is lost before
its process holds it, which no renewer can help.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from durability.conftest import Db, SagaCluster, eventually, saga, step
from durability.ledger import Ledger

SAGAS_PER_REPLICA = 50
STEP_SECONDS = 1.5
TRIGGER_SPREAD = 1.0


@contextmanager
def cpu_burners() -> Iterator[None]:
    """One busy-looping process per CPU for the duration of the block."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


async def test_fifty_sagas_per_replica_keep_one_second_leases_on_a_starved_cpu(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/work", delay=STEP_SECONDS)
    steps = [step(name, "/work", undo="/undo") for name in ("reserve", "charge", "ship")]
    cluster.write_saga(saga("busy", steps))
    replicas = [cluster.start() for _ in range(2)]
    total = SAGAS_PER_REPLICA * len(replicas)

    async def trigger(n: int) -> str:
        await asyncio.sleep(n * TRIGGER_SPREAD / total)
        return await cluster.trigger(http, replicas[n % 2], "busy", {"order": f"L-{n}"})

    ids = await asyncio.gather(*(trigger(n) for n in range(total)))
    most_running = 0

    async def all_completed() -> bool:
        nonlocal most_running
        sql = "SELECT status, count(*) FROM saga_instances GROUP BY status"
        counts = {r["status"]: r["count"] for r in await pg.conn.fetch(sql)}
        most_running = max(most_running, counts.get("running", 0))
        return counts.get("completed") == total

    with cpu_burners():
        await eventually(all_completed, "every saga completed", within=90, every=0.25)

    assert most_running >= 0.8 * total, "the sagas did not run at the same time"
    records = [r for replica in replicas for r in replica.log_records()]
    assert [r for r in records if r.get("event") in ("lease_lost", "resume")] == []
    assert ledger.overlaps == []
    per_key = Counter(call.key for call in ledger.calls)
    assert set(per_key.values()) == {1}, "a step was sent more than once"
    assert len(per_key) == 3 * total
    assert {call.saga_id for call in ledger.calls} == set(ids)
