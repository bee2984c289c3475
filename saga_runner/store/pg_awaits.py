"""The PostgreSQL statements of awaiting steps: callback tokens and the outcome that ends a wait.

Each primitive is one statement. The step row is the arbiter of a wait: a callback's outcome,
a heartbeat and the timeout or deadline that stops the wait all update it only while it has no
``await_outcome`` yet, so concurrent ones are ordered by its row lock and exactly one wins (a
loser's ``WHERE`` is checked again against the winner's row).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from saga_runner.store.backend import Row

_OPEN: Final = """
    FROM saga_callback_tokens AS t, saga_instances AS i
    WHERE t.token_hash = $1 AND s.saga_id = t.saga_id AND s.step_order = t.step_order
      AND i.id = t.saga_id AND i.status = 'running'
      AND (i.deadline_at IS NULL OR i.deadline_at > $2::timestamptz)
      AND s.await_outcome IS NULL
      AND (s.wait_until IS NULL OR s.wait_until > $2::timestamptz)"""
"""The conditions under which a token may still end or extend its step's wait."""

RECORD_OUTCOME: Final = f"""
    WITH st AS (
        UPDATE saga_steps AS s SET await_outcome = $3, await_result = $4::jsonb, updated_at = $2
        {_OPEN} AND s.status IN ('running', 'waiting')
        RETURNING s.saga_id
    ), due AS (
        UPDATE saga_instances AS i SET next_run_at = $2 FROM st WHERE i.id = st.saga_id
    )
    SELECT saga_id FROM st"""

EXTEND_WAIT: Final = f"""
    WITH st AS (
        UPDATE saga_steps AS s
        SET wait_until = $2::timestamptz + make_interval(secs => s.wait_seconds), updated_at = $2
        {_OPEN} AND s.status = 'waiting'
        RETURNING s.saga_id, s.wait_until
    ), due AS (
        UPDATE saga_instances AS i SET next_run_at = LEAST(st.wait_until, i.deadline_at)
        FROM st WHERE i.id = st.saga_id AND i.owner IS NULL
    )
    SELECT saga_id FROM st"""

TOKEN_STATE: Final = """
    SELECT s.saga_id, s.step_order, s.status, s.await_outcome, s.wait_until,
           i.status AS saga_status, i.deadline_at, i.business_type
    FROM saga_callback_tokens AS t
    JOIN saga_steps AS s ON s.saga_id = t.saga_id AND s.step_order = t.step_order
    JOIN saga_instances AS i ON i.id = t.saga_id
    WHERE t.token_hash = $1"""

STOP_WAIT: Final = """
    UPDATE saga_steps SET await_outcome = $3, updated_at = $4, await_result = $6::jsonb
    WHERE saga_id = $1 AND step_order = $2 AND status = 'waiting' AND await_outcome IS NULL
      AND ($5 OR wait_until <= $4)"""

COUNT_WAITING: Final = """
    SELECT i.business_type, count(*) AS n
    FROM saga_steps AS s JOIN saga_instances AS i ON i.id = s.saga_id
    WHERE s.status = 'waiting' GROUP BY i.business_type"""


class PostgresAwaits:
    """The await primitives of ``StoreBackend`` on PostgreSQL (mixed into its backend)."""

    _pool: Any

    async def insert_token(self, row: Row) -> None:
        sql = (
            "INSERT INTO saga_callback_tokens (token_hash, saga_id, step_order, created_at) "
            "VALUES ($1, $2, $3, $4)"
        )
        args = (row["token_hash"], row["saga_id"], row["step_order"], row["created_at"])
        await self._pool.execute(sql, *args)

    async def record_outcome(
        self, token_hash: str, outcome: str, result: Any, now: datetime
    ) -> bool:
        return (
            await self._pool.fetchval(RECORD_OUTCOME, token_hash, now, outcome, result) is not None
        )

    async def extend_wait(self, token_hash: str, now: datetime) -> bool:
        return await self._pool.fetchval(EXTEND_WAIT, token_hash, now) is not None

    async def token_state(self, token_hash: str) -> Row | None:
        found = await self._pool.fetchrow(TOKEN_STATE, token_hash)
        return None if found is None else dict(found)

    async def stop_wait(
        self,
        saga_id: str,
        step_order: int,
        outcome: str,
        now: datetime,
        force: bool,
        result: Any = None,
    ) -> bool:
        args = (saga_id, step_order, outcome, now, force, result)
        status = await self._pool.execute(STOP_WAIT, *args)
        return bool(status == "UPDATE 1")

    async def count_waiting(self) -> dict[str, int]:
        return {r["business_type"]: r["n"] for r in await self._pool.fetch(COUNT_WAITING)}
