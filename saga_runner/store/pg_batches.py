"""PostgreSQL statements of the batched writes: creation and ``apply``, one text per shape.

A batch's statement depends on its shape (which columns change, how many steps and attempts),
never on its values, so each text is built once (``functools.cache``) and asyncpg's per-connection
statement cache prepares it once per connection. ``apply_args`` lists the values in the order the
text numbers its parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, Final

from saga_runner.records import Lease
from saga_runner.store import sqltext
from saga_runner.store.backend import Row, StepUpdate

FENCE: Final = "id = $1 AND lease_version = $2 AND owner = $3"
ATTEMPT_TYPES: Final = (
    ("step_order", "integer"),
    ("kind", "text"),
    ("attempt", "integer"),
    ("started_at", "timestamptz"),
    ("duration_ms", "double precision"),
    ("status_code", "integer"),
    ("error", "text"),
)
STEP_COLUMNS: Final = (
    ("step_order", "integer"),
    ("step_name", "text"),
    ("status", "text"),
    ("execute_data", "jsonb"),
    ("retry_count", "integer"),
    ("max_retry_count", "integer"),
    ("stage", "integer"),
    ("phase", "text"),
)
"""The per-step columns of a creation, sent as one array each (``unnest``)."""

ApplyShape = tuple[bool, tuple[tuple[str, ...], ...], int, tuple[str, ...]]
"""Whether the saga status is checked, each step's changed columns, the number of attempts and
the instance's changed columns."""


def _param(n: int) -> str:
    return f"${n}"


@cache
def lease_expiry(expires: str, seconds: str) -> str:
    """SQL for a lease's expiry: the given time if not NULL (an injected test clock), else
    ``seconds`` from now by the database's clock, read in this statement."""
    return f"COALESCE({expires}::timestamptz, now() + make_interval(secs => {seconds}::float8))"


def db_now(now: str) -> str:
    """SQL for "now" in lease comparisons: the given time if not NULL, else the database's."""
    return f"COALESCE({now}::timestamptz, now())"


def create_sql(instance_columns: tuple[str, ...]) -> str:
    """The statement inserting an instance, its steps and its ``started`` event (if any).

    Parameters: the instance's values, one array per ``STEP_COLUMNS``, then the event's actor
    (NULL: no event) and detail, then the lease's length in seconds (its expiry is computed by
    the database's clock when ``lease_expires_at`` is NULL). Nothing is inserted on a duplicate
    idempotency key; the steps' and event's foreign keys are checked at the statement's end.
    """
    n = len(instance_columns) + 1
    actor, detail = n + len(STEP_COLUMNS), n + len(STEP_COLUMNS) + 1
    seconds = f"${detail + 1}"
    insert = sqltext.insert(
        "saga_instances",
        instance_columns,
        _param,
        {"lease_expires_at": lambda placeholder: lease_expiry(placeholder, seconds)},
    )
    arrays = ", ".join(f"${n + i}::{kind}[]" for i, (_, kind) in enumerate(STEP_COLUMNS))
    names = ", ".join(name for name, _ in STEP_COLUMNS)
    return f"""
        WITH inst AS (
            {insert} ON CONFLICT (business_type, idempotency_key) DO NOTHING RETURNING *
        ), steps AS (
            INSERT INTO saga_steps ({names}, saga_id, created_at, updated_at)
            SELECT s.*, inst.id, inst.created_at, inst.created_at
            FROM inst, unnest({arrays}) AS s({names})
            RETURNING id, step_order
        ), event AS (
            INSERT INTO saga_events (saga_id, at, actor, action, detail)
            SELECT inst.id, inst.created_at, ${actor}::text, 'started', ${detail}::jsonb
            FROM inst WHERE ${actor}::text IS NOT NULL
        )
        SELECT inst.*, ARRAY(SELECT id FROM steps ORDER BY step_order) AS step_ids FROM inst"""


def create_args(
    instance: Row, steps: Sequence[Row], event: Row | None, lease_seconds: float
) -> list[Any]:
    """The values of ``create_sql``, in its parameter order."""
    args = list(instance.values())
    args += [[step[name] for step in steps] for name, _ in STEP_COLUMNS]
    args += [None, None] if event is None else [event["actor"], event["detail"]]
    args.append(float(lease_seconds))
    return args


def apply_shape(
    sources: frozenset[str] | None,
    changes: Row,
    steps: Sequence[StepUpdate],
    attempts: Sequence[Row],
) -> ApplyShape:
    """What ``apply_sql`` needs to know of a batch."""
    return (
        sources is not None,
        tuple(tuple(step.changes) for step in steps),
        len(attempts),
        tuple(changes),
    )


@cache
def apply_sql(shape: ApplyShape) -> str:
    """One statement for a whole batch: a fence that locks the instance row only when the
    lease matches and every precondition holds, and every change joined to it, so either all
    of the batch is written or none; it returns the instance as written.

    Every change also names its rows by ``$1`` (the saga id), not only by the join to the
    fence: a generic plan cannot see through the CTE and would scan the whole table."""
    checks_status, step_columns, attempt_count, saga_columns = shape
    n = 3
    conditions = [FENCE]
    parts: list[str] = []
    if checks_status:
        n += 1
        conditions.append(f"status = ANY(${n}::text[])")
    for i, columns in enumerate(step_columns):
        where = f"step_order = ${n + 1} AND status = ANY(${n + 2}::text[])"
        conditions.append(f"EXISTS (SELECT 1 FROM saga_steps WHERE saga_id = $1 AND {where})")
        assignments = sqltext.assignments(dict.fromkeys(columns), _param, n + 3)
        parts.append(
            f"step{i} AS (UPDATE saga_steps SET {assignments} FROM fence "
            f"WHERE saga_steps.saga_id = $1 AND saga_steps.saga_id = fence.id AND {where})"
        )
        n += 2 + len(columns)
    names = ", ".join(name for name, _ in ATTEMPT_TYPES)
    for i in range(attempt_count):
        conditions.append(
            f"EXISTS (SELECT 1 FROM saga_steps WHERE saga_id = $1 AND step_order = ${n + 1})"
        )
        values = ", ".join(f"${n + 1 + k}::{kind}" for k, (_, kind) in enumerate(ATTEMPT_TYPES))
        parts.append(
            f"attempt{i} AS (INSERT INTO saga_step_attempts (saga_id, {names}) "
            f"SELECT fence.id, {values} FROM fence)"
        )
        n += len(ATTEMPT_TYPES)
    assignments = sqltext.assignments(dict.fromkeys(saga_columns), _param, n + 1)
    return (
        f"WITH fence AS (SELECT id FROM saga_instances WHERE {' AND '.join(conditions)} "
        "FOR NO KEY UPDATE), "
        + "".join(f"{part}, " for part in parts)
        + f"saga AS (UPDATE saga_instances AS s SET {assignments} FROM fence "
        "WHERE s.id = $1 AND s.id = fence.id RETURNING s.*) SELECT * FROM saga"
    )


def apply_args(
    lease: Lease,
    sources: frozenset[str] | None,
    changes: Row,
    steps: Sequence[StepUpdate],
    attempts: Sequence[Row],
) -> list[Any]:
    """The values of ``apply_sql``, in its parameter order."""
    args: list[Any] = [lease.saga_id, lease.version, lease.owner]
    if sources is not None:
        args.append(list(sources))
    for step in steps:
        args += [step.step_order, list(step.sources), *step.changes.values()]
    for row in attempts:
        args += [row[name] for name, _ in ATTEMPT_TYPES]
    args += changes.values()
    return args
