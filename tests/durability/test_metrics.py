"""``saga_in_flight`` and ``saga_oldest_unfinished_age_seconds`` tell an operator a saga is stuck.

A step whose upstream does not answer keeps its saga in flight: the gauge counts it and the
oldest-unfinished age grows with the wall clock; once it finishes both fall back to zero.
"""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
from conftest import Sidecar

from durability.conftest import Db, SagaCluster, eventually, metric, saga, step
from durability.ledger import Ledger

IN_FLIGHT = 'saga_in_flight{saga="stuck"}'
OLDEST = "saga_oldest_unfinished_age_seconds"


def oldest_age(sidecar: Sidecar) -> float:
    """The exported age of the oldest unfinished saga (0 until first reported)."""
    return metric(sidecar, OLDEST) or 0.0


async def test_in_flight_and_oldest_age_track_a_stuck_saga(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    gate = threading.Event()
    ledger.script("/hang", gate=gate)
    cluster.write_saga(saga("stuck", [step("hang", "/hang")]))
    sidecar = cluster.start()
    try:
        started = time.time()
        saga_id = await cluster.trigger(http, sidecar, "stuck", {"order": "S-1"})
        await eventually(lambda: ledger.calls_to("/hang", saga_id), "the step hangs")
        first_age = await eventually(lambda: oldest_age(sidecar), "oldest age reported")
        assert metric(sidecar, IN_FLIGHT) == 1
        await asyncio.sleep(1.0)
        await eventually(lambda: oldest_age(sidecar) >= first_age + 0.8, "oldest age grows")
        assert oldest_age(sidecar) <= time.time() - started + 0.5
        assert metric(sidecar, IN_FLIGHT) == 1
    finally:
        gate.set()

    assert (await pg.wait_status(saga_id))["status"] == "completed"
    await eventually(lambda: metric(sidecar, OLDEST) == 0, "oldest age back to 0")
    assert metric(sidecar, IN_FLIGHT) == 0
