"""Lease expiry comes from the database's clock, so a replica whose wall clock is ahead never
claims a saga another replica is running.

Two saga-sidecar processes share the test schema; the second runs under libfaketime with its
wall clock ten seconds ahead (ten leases). The first runs a saga whose step takes three seconds
and renews its lease meanwhile. Had either replica computed or compared expiry with its own
clock, the skewed one would have claimed the saga at once and called the step a second time,
concurrently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from durability.conftest import Db, SagaCluster, log_events, saga, step
from durability.ledger import Ledger

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AHEAD = {
    "LD_PRELOAD": str(LIBFAKETIME),
    "FAKETIME": "+10s",
    "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    "FAKETIME_DONT_RESET": "1",
}

pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists(), reason="needs libfaketime (Debian package faketime)"
)


async def test_a_replica_whose_clock_is_ahead_never_takes_a_live_saga(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession
) -> None:
    ledger.script("/slow", first_delay=3.0)
    cluster.write_saga(saga("skewed", [step("slow", "/slow")]))
    honest = cluster.start()
    saga_id = await cluster.trigger(http, honest, "skewed", {"order": "S-1"})
    ahead = cluster.launch(cluster.config(), env=AHEAD)

    row = await pg.wait_status(saga_id, within=20)
    await asyncio.sleep(0.5)

    assert row["status"] == "completed"
    assert len(ledger.calls_to("/slow", saga_id)) == 1, "the step ran once, not twice"
    assert not [r for r in log_events(ahead, saga_id) if r.get("event") == "resume"]
