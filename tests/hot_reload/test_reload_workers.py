"""``workers: 2``: SIGHUP to the supervising parent, or ``POST /reload`` on worker 0's admin
listener, reloads every worker, and the next triggers all run the new saga file."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
from conftest import Sidecar
from durability.conftest import Db, SagaCluster, eventually, saga, step
from durability.ledger import Ledger
from foundation.test_workers import children

from hot_reload.conftest import events


async def two_reloads_after(sidecar: Sidecar, seen: int) -> set[int]:
    """The pids of the processes that logged the two reloads after the first ``seen``."""

    def done() -> list[dict[str, object]]:
        found = events(sidecar, "config_reloaded")[seen:]
        return found[:2] if len(found) >= 2 else []

    records = await eventually(done, f"two reloads after {seen}")
    return {int(str(r["pid"])) for r in records}


async def test_sighup_to_the_parent_and_post_reload_reach_every_worker(
    cluster: SagaCluster, ledger: Ledger, pg: Db, http: aiohttp.ClientSession, redis_url: str
) -> None:
    cluster.write_saga(saga("spread", [step("one", "/v1/one")]))
    store = f"{redis_url}?prefix=reload-{uuid.uuid4().hex[:8]}"
    sidecar = cluster.start(workers=2, idempotency={"store": store})
    await eventually(lambda: len(children(sidecar.pid)) == 2, "two workers")
    workers = children(sidecar.pid)

    cluster.write_saga(saga("spread", [step("one", "/v2/one")]))
    sidecar.signal(signal.SIGHUP)
    first = await two_reloads_after(sidecar, 0)
    ids = await asyncio.gather(
        *(cluster.trigger(http, sidecar, "spread", {"order": f"S-{n}"}) for n in range(12))
    )
    rows = [await pg.wait_status(saga_id) for saga_id in ids]

    assert first == set(workers)
    assert {row["status"] for row in rows} == {"completed"}
    assert {c.path for saga_id in ids for c in ledger.of_saga(saga_id)} == {"/v2/one"}

    cluster.write_saga(saga("spread", [step("one", "/v3/one")]))
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{sidecar.admin_url}/reload", headers=headers) as response:
        assert response.status == 202
    again = await two_reloads_after(sidecar, 2)
    saga_id = await cluster.trigger(http, sidecar, "spread", {"order": "S-last"})
    await pg.wait_status(saga_id)

    assert again == set(workers)
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/v3/one"]
