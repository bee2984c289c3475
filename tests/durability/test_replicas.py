"""Two replicas resuming the same backlog never run one saga at the same time.

200 sagas are recorded as if a crashed replica had started them, with leases that all expire at
the same moment; two sidecar processes then race to resume them. The upstream flags any two
calls of one saga in flight at once; every step must run exactly once and every saga must end.
"""

from __future__ import annotations

from collections import Counter

from durability.conftest import Db, SagaCluster, eventually, saga, step
from durability.ledger import Ledger
from saga_runner.catalog import load_definitions
from saga_runner.records import NewStep

SAGAS = 200


async def seed(pg: Db, cluster: SagaCluster, count: int) -> list[str]:
    """Record ``count`` running sagas held by a dead replica, then expire all their leases."""
    catalog = load_definitions(cluster.workdir, ["sagas/*.yaml"], ["ledger"])
    definition = catalog.by_name["fanout"]
    store = await pg.open_store()
    await store.save_definition(
        definition.definition_hash, definition.name, definition.to_snapshot()
    )
    ids = []
    for n in range(count):
        created = await store.create_instance(
            business_type="fanout",
            business_id=f"order-{n}",
            definition_hash=definition.definition_hash,
            mode="async",
            input_data={"order": f"order-{n}", "kind": "refuse" if n % 10 == 0 else "ok"},
            steps=[NewStep(s.name, s.retry.attempts) for s in definition.steps],
            owner="crashed-replica",
            lease_seconds=600,
        )
        ids.append(created.saga.id)
    await pg.conn.execute("UPDATE saga_instances SET lease_expires_at = now()")
    return ids


def resumed_by(records: list[dict[str, object]]) -> list[str]:
    """The saga ids a sidecar's log says it resumed."""
    return [str(r["saga_id"]) for r in records if r.get("event") == "resume"]


async def test_two_replicas_never_run_the_same_saga_at_once_and_finish_every_one(
    cluster: SagaCluster, ledger: Ledger, pg: Db
) -> None:
    ledger.script("/a", delay=0.03)
    ledger.script("/b/ok", delay=0.03)
    ledger.script("/b/refuse", delay=0.03, status=409)
    cluster.write_saga(
        saga(
            "fanout",
            [step("a", "/a", undo="/a/undo"), step("b", "/b/{{ input.kind }}", undo="/b/undo")],
        )
    )
    # The suite's 1 s lease: each replica's one renewer keeps its 50 leases on a loaded box.
    replicas = [cluster.start() for _ in range(2)]
    ids = await seed(pg, cluster, SAGAS)

    async def all_finished() -> bool:
        sql = "SELECT status, count(*) FROM saga_instances GROUP BY status"
        counts = {r["status"]: r["count"] for r in await pg.conn.fetch(sql)}
        return counts == {"completed": SAGAS - SAGAS // 10, "compensated": SAGAS // 10}

    await eventually(all_finished, "every saga finished", within=30)

    assert ledger.overlaps == []
    logs = [r.log_records() for r in replicas]
    assert not [r for log in logs for r in log if r.get("event") == "lease_lost"]
    per_key = Counter(c.key for c in ledger.calls)
    assert set(per_key.values()) == {1}, "a step was executed more than once"
    assert len(ledger.calls_to("/a")) == SAGAS
    assert len(ledger.calls_to("/a/undo")) == len(ledger.calls_to("/b/refuse")) == SAGAS // 10
    resumed = [resumed_by(log) for log in logs]
    assert all(resumed), "both replicas should have taken part"
    assert Counter(resumed[0] + resumed[1]) == Counter(ids)
