"""The SQLite statements of awaiting steps: callback tokens and the outcome that ends a wait.

Each primitive runs in one ``BEGIN IMMEDIATE`` transaction, which holds the database's write
lock: a callback's outcome, a heartbeat and the timeout or deadline that stops a wait are
strictly ordered, and only the first to find the step without an ``await_outcome`` changes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Final

import aiosqlite

from saga_runner.store.backend import Row
from saga_runner.store.sqlite_rows import encode, one, timestamp

TOKEN_STATE: Final = """
    SELECT s.saga_id, s.step_order, s.status, s.await_outcome, s.wait_until, s.wait_seconds,
           i.status AS saga_status, i.deadline_at, i.business_type, i.owner
    FROM saga_callback_tokens AS t
    JOIN saga_steps AS s ON s.saga_id = t.saga_id AND s.step_order = t.step_order
    JOIN saga_instances AS i ON i.id = t.saga_id
    WHERE t.token_hash = ?1"""

STOP_WAIT: Final = """
    UPDATE saga_steps SET await_outcome = ?3, updated_at = ?4, await_result = ?6
    WHERE saga_id = ?1 AND step_order = ?2 AND status = 'waiting' AND await_outcome IS NULL
      AND (?5 OR wait_until <= ?4)"""

COUNT_WAITING: Final = """
    SELECT i.business_type, count(*) AS n
    FROM saga_steps AS s JOIN saga_instances AS i ON i.id = s.saga_id
    WHERE s.status = 'waiting' GROUP BY i.business_type"""


def still_open(state: Row, now: datetime, statuses: Sequence[str]) -> bool:
    """Whether a token's step (``state``, decoded) may still have its wait ended or extended."""
    deadline = state["deadline_at"]
    until = state["wait_until"]
    return (
        state["saga_status"] == "running"
        and (deadline is None or deadline > now)
        and state["await_outcome"] is None
        and (until is None or until > now)
        and state["status"] in statuses
    )


class SqliteAwaits:
    """The await primitives of ``StoreBackend`` on SQLite (mixed into its backend)."""

    # The backend's own helpers (``SqliteBackend``).
    _write: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]
    _fetchone: Callable[[str, Sequence[Any]], Awaitable[Row | None]]
    _fetchall: Callable[[str, Sequence[Any]], Awaitable[list[Row]]]

    async def insert_token(self, row: Row) -> None:
        sql = (
            "INSERT INTO saga_callback_tokens (token_hash, saga_id, step_order, created_at) "
            "VALUES (?1, ?2, ?3, ?4)"
        )
        args = [row["token_hash"], row["saga_id"], row["step_order"], timestamp(row["created_at"])]
        async with self._write() as conn:
            await conn.execute(sql, args)

    async def record_outcome(
        self, token_hash: str, outcome: str, result: Any, now: datetime
    ) -> bool:
        async with self._write() as conn:
            state = await one(conn, TOKEN_STATE, [token_hash])
            if state is None or not still_open(state, now, ("running", "waiting")):
                return False
            stamp = timestamp(now)
            await conn.execute(
                "UPDATE saga_steps SET await_outcome = ?3, await_result = ?4, updated_at = ?5 "
                "WHERE saga_id = ?1 AND step_order = ?2",
                [
                    state["saga_id"],
                    state["step_order"],
                    outcome,
                    encode("await_result", result),
                    stamp,
                ],
            )
            await conn.execute(
                "UPDATE saga_instances SET next_run_at = ?2 WHERE id = ?1",
                [state["saga_id"], stamp],
            )
        return True

    async def extend_wait(self, token_hash: str, now: datetime) -> bool:
        async with self._write() as conn:
            state = await one(conn, TOKEN_STATE, [token_hash])
            if state is None or not still_open(state, now, ("waiting",)):
                return False
            until = now + timedelta(seconds=state["wait_seconds"] or 0)
            await conn.execute(
                "UPDATE saga_steps SET wait_until = ?3, updated_at = ?4 "
                "WHERE saga_id = ?1 AND step_order = ?2",
                [state["saga_id"], state["step_order"], timestamp(until), timestamp(now)],
            )
            if state["owner"] is None:
                deadline = state["deadline_at"]
                due = until if deadline is None else min(until, deadline)
                await conn.execute(
                    "UPDATE saga_instances SET next_run_at = ?2 WHERE id = ?1",
                    [state["saga_id"], timestamp(due)],
                )
        return True

    async def token_state(self, token_hash: str) -> Row | None:
        return await self._fetchone(TOKEN_STATE, [token_hash])

    async def stop_wait(
        self,
        saga_id: str,
        step_order: int,
        outcome: str,
        now: datetime,
        force: bool,
        result: Any = None,
    ) -> bool:
        stored = encode("await_result", result)
        args = [saga_id, step_order, outcome, timestamp(now), int(force), stored]
        async with self._write() as conn, conn.execute(STOP_WAIT, args) as cursor:
            return cursor.rowcount == 1

    async def count_waiting(self) -> dict[str, int]:
        return {r["business_type"]: r["n"] for r in await self._fetchall(COUNT_WAITING, ())}
