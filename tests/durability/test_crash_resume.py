"""A sidecar killed with ``kill -9`` mid-call: another process finishes its saga, effects once.

The saga's service is an idempotency-enabled sidecar (``concurrent: wait``, memory store) in
front of the recording app, as docs/SAGAS.md intends: the resumed process re-sends the step whose
outcome it cannot know with the same ``Idempotency-Key``, the front sidecar sees that key twice,
and the app behind it applies the effect once.

Every test runs on both saga stores: on PostgreSQL the process that finishes is another replica;
on SQLite it is a new process started on the same database file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import Sidecar

from durability.conftest import (
    STORES,
    Records,
    SagaCluster,
    eventually,
    kill,
    log_events,
    saga,
    step,
)
from durability.ledger import Ledger

pytestmark = pytest.mark.parametrize("store_kind", STORES)


def idempotent_front(launch: Callable[..., Sidecar], app_url: str) -> Sidecar:
    """A plain sidecar with Idempotency-Key protection in front of ``app_url``."""
    return launch(
        {
            "shutdown_grace": "1s",
            "upstream": {"url": app_url},
            "idempotency": {"store": "memory://", "concurrent": "wait", "lock_timeout": "10s"},
        }
    )


def front_requests(front: Sidecar, path: str) -> list[dict[str, Any]]:
    """The front sidecar's access-log records for ``path``."""
    return [r for r in front.log_records() if r.get("logger") == "saga_sidecar.access"
            and r.get("path") == path]  # fmt: skip


def order_saga() -> dict[str, Any]:
    """reserve -> charge -> ship, each undoable except ship, all through the front sidecar."""
    return saga(
        "order",
        [
            step("reserve", "/reserve", undo="/release", service="shop"),
            step("charge", "/charge", undo="/refund", service="shop"),
            step("ship", "/ship", service="shop"),
        ],
    )


async def test_saga_killed_mid_step_completes_in_a_new_process_with_the_step_applied_once(
    cluster: SagaCluster,
    ledger: Ledger,
    records: Records,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    front = idempotent_front(sidecar_process, cluster.ledger_url)
    cluster.services["shop"] = front.url
    ledger.script("/charge", delay=2.0)
    cluster.write_saga(order_saga())
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "order", {"order": "A-1"})
    await eventually(lambda: ledger.calls_to("/charge", saga_id), "charge reached the app")
    kill(first)

    second = cluster.start()
    row = await records.wait_status(saga_id)

    assert row.status == "completed"
    for name in ("reserve", "charge", "ship"):
        assert ledger.executions(f"{saga_id}:{name}:action") == 1, name
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/reserve", "/charge", "/ship"]
    seen = front_requests(front, "/charge")
    assert len(seen) == 2
    assert sorted(r["idempotency"] for r in seen) == ["hit", "miss"]
    steps = await records.steps(saga_id)
    assert [s.status for s in steps] == ["succeeded"] * 3
    assert steps[1].retry_count == 2  # the resumed call counts as the second attempt
    events = [r.get("event") for r in log_events(second, saga_id)]
    assert "resume" in events
    assert "resending step with unknown outcome" in events


async def test_saga_killed_mid_compensation_ends_compensated_with_each_undo_applied_once(
    cluster: SagaCluster,
    ledger: Ledger,
    records: Records,
    http: aiohttp.ClientSession,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    front = idempotent_front(sidecar_process, cluster.ledger_url)
    cluster.services["shop"] = front.url
    ledger.script("/ship", status=409)
    ledger.script("/refund", delay=2.0)
    cluster.write_saga(order_saga())
    first = cluster.start()
    saga_id = await cluster.trigger(http, first, "order", {"order": "A-2"})
    await eventually(lambda: ledger.calls_to("/refund", saga_id), "refund reached the app")
    kill(first)

    cluster.start()
    row = await records.wait_status(saga_id)

    assert row.status == "compensated"
    assert ledger.executions(f"{saga_id}:charge:compensation") == 1
    assert ledger.executions(f"{saga_id}:reserve:compensation") == 1
    assert [c.path for c in ledger.of_saga(saga_id)] == [
        "/reserve",
        "/charge",
        "/ship",
        "/refund",
        "/release",
    ]
    assert sorted(r["idempotency"] for r in front_requests(front, "/refund")) == ["hit", "miss"]
    steps = await records.steps(saga_id)
    assert [s.status for s in steps] == ["compensated", "compensated", "failed"]


async def test_sidecar_stopped_mid_step_hands_its_saga_over_and_it_completes_elsewhere(
    cluster: SagaCluster, ledger: Ledger, records: Records, http: aiohttp.ClientSession
) -> None:
    ledger.script("/pack", first_delay=3.0)
    cluster.write_saga(saga("drain", [step("pack", "/pack"), step("send", "/send")]))
    draining = cluster.start(shutdown_grace="500ms")
    saga_id = await cluster.trigger(http, draining, "drain", {"order": "D-1"})
    await eventually(lambda: ledger.calls_to("/pack", saga_id), "pack reached the app")

    assert draining.stop() == 0
    row = await records.instance(saga_id)
    assert (row.status, row.owner) == ("running", None), "released at shutdown"

    cluster.start()
    assert (await records.wait_status(saga_id)).status == "completed"
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/pack", "/pack", "/send"]
