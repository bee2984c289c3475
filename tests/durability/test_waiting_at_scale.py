"""10,000 sagas waiting for their callbacks cost a replica no memory per saga and no query per
saga: each is a row, and a recovery pass makes the same few statements whether 10 or 10,000
sagas wait (their waits' ends are found by the one indexed claim of due sagas, and when the next
is due by one more indexed query).

PostgreSQL, the test's own schema; the waiting sagas are written straight into the tables (as
parked runs leave them), then a real sidecar process runs its recovery loop over them, and an
in-process recovery worker's statements are counted per pass.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Sidecar

from durability.conftest import Db, SagaCluster, metric, saga, step
from saga_runner.catalog import SagaCatalog
from saga_runner.definition import load_definition
from saga_runner.recovery import RecoverySettings, RecoveryWorker
from saga_runner.runtime import RuntimeSettings, SagaRuntime

MANY = 10_000


def payment_saga() -> dict[str, Any]:
    """reserve -> charge (awaits a callback for an hour) -> ship."""
    charge = step("charge", "/charge", undo="/refund")
    charge["await"] = {"callback": {"timeout": "1h"}}
    return saga(
        "payment", [step("reserve", "/reserve", undo="/release"), charge, step("ship", "/ship")]
    )


async def park(pg: Db, definition_hash: str, count: int, first: int = 0) -> None:
    """Write ``count`` sagas whose charge waits for an hour, as a parked run leaves them."""
    await pg.conn.execute(
        """
        INSERT INTO saga_instances (id, business_type, status, definition_hash, mode,
            current_step, next_run_at, created_at, updated_at, lease_version)
        SELECT 'parked-' || n, 'payment', 'running', $1, 'async', 1,
            now() + interval '1 hour', now(), now(), 1
        FROM generate_series($2::int, $3::int) AS n""",
        definition_hash,
        first,
        first + count - 1,
    )
    await pg.conn.execute(
        """
        INSERT INTO saga_steps (saga_id, step_order, step_name, status, stage, created_at,
            updated_at, await_kind, waiting_since, wait_until, wait_seconds, result)
        SELECT 'parked-' || n, s.o, s.name, s.status, s.o, now(), now(),
            CASE WHEN s.o = 1 THEN 'callback' END,
            CASE WHEN s.o = 1 THEN now() END,
            CASE WHEN s.o = 1 THEN now() + interval '1 hour' END,
            CASE WHEN s.o = 1 THEN 3600 END,
            CASE WHEN s.o < 2 THEN '{"status": 201, "headers": {}, "body": {}}'::jsonb END
        FROM generate_series($1::int, $2::int) AS n,
            (VALUES (0, 'reserve', 'succeeded'), (1, 'charge', 'waiting'),
                    (2, 'ship', 'pending')) AS s(o, name, status)""",
        first,
        first + count - 1,
    )


async def saved_definition(pg: Db, path: Path) -> str:
    """Save the saga file's definition in the store; its hash."""
    definition = load_definition(path, services=None)
    store = await pg.open_store()
    await store.save_definition(
        definition.definition_hash, definition.name, definition.to_snapshot()
    )
    return definition.definition_hash


class CountingPool:
    """An asyncpg pool that counts the statements sent through it (transactions included).

    The retention DELETE is left out: it runs only when this replica gets the retention lock,
    which the sidecar process pruning the same schema may hold at that instant (a pass then
    made one statement fewer, and the per-pass counts differed for that reason alone).
    """

    def __init__(self, pool: Any, counts: Counter[str]) -> None:
        self._pool = pool
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._pool, name)
        if name in ("fetch", "fetchrow", "fetchval", "execute"):
            return self._counted(attribute)
        if name == "acquire":
            return lambda *a, **k: _CountingAcquire(attribute(*a, **k), self._counts)
        return attribute

    def _counted(self, method: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if not (args and isinstance(args[0], str) and "doomed" in args[0]):
                self._counts["statements"] += 1
            return await method(*args, **kwargs)

        return call


class _CountingAcquire:
    def __init__(self, acquiring: Any, counts: Counter[str]) -> None:
        self._acquiring = acquiring
        self._counts = counts

    async def __aenter__(self) -> Any:
        conn = await self._acquiring.__aenter__()
        return CountingPool(conn, self._counts)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._acquiring.__aexit__(*exc)


async def statements_per_pass(worker: RecoveryWorker, counts: Counter[str]) -> list[int]:
    """The statements of each of five recovery passes."""
    per_pass = []
    for _ in range(5):
        before = counts["statements"]
        claimed = await worker.tick()
        assert claimed == []
        per_pass.append(counts["statements"] - before)
    return per_pass


async def test_ten_thousand_waiting_sagas_cost_no_memory_and_no_query_per_saga(
    cluster: SagaCluster,
    pg: Db,
    tmp_path: Path,
    sidecar_process: Callable[..., Sidecar],
) -> None:
    path = cluster.write_saga(payment_saga())
    definition_hash = await saved_definition(pg, path)
    await park(pg, definition_hash, 10)

    settings = RuntimeSettings(
        store_url=pg.url,
        base_dir=tmp_path,
        migrate=False,
        lease_seconds=5.0,
        default_timeout=5.0,
        services={"ledger": cluster.ledger_url},
    )
    runtime = await SagaRuntime.open(settings, SagaCatalog.of([]))
    counts: Counter[str] = Counter()
    backend: Any = runtime.store.backend
    backend._pool = CountingPool(backend._pool, counts)
    waiting: list[dict[str, int]] = []
    worker = RecoveryWorker(
        runtime, RecoverySettings(0.2, 5.0, 86400.0), report_waiting=waiting.append
    )
    sidecar = cluster.start()
    try:
        await asyncio.sleep(1.0)  # five passes of its recovery loop over 10 waiting sagas
        few_rss = sidecar.rss_bytes()
        few = await statements_per_pass(worker, counts)

        await park(pg, definition_hash, MANY - 10, first=10)
        many = await statements_per_pass(worker, counts)
        await asyncio.sleep(2.0)  # ten passes over 10,000
        many_rss = sidecar.rss_bytes()
    finally:
        await runtime.close()

    assert few == many and len(set(many)) == 1, (few, many)
    assert many[0] <= 5
    assert waiting[-1] == {"payment": MANY}
    assert metric(sidecar, 'saga_waiting{saga="payment"}') == MANY
    grown = many_rss - few_rss
    # A task, a timer or a row kept per saga would cost well over 1 KiB each: 10 MiB or more.
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown / 1024:.0f} KiB with {MANY} waiting"
    print(f"statements per pass: {many[0]}; RSS {few_rss >> 10} KiB -> {many_rss >> 10} KiB")
