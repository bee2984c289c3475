"""SQL text shared by both backends, rendered with each dialect's placeholder style.

The statements whose shape depends on the arguments live here (which columns an update sets,
which filters a list applies), and those both dialects write alike. Column names always come
from this package's code, never from user input; ``column`` checks that anyway, so a future
caller cannot inject SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from saga_runner.records import PageCursor
from saga_runner.store.backend import ListFilter

Placeholder = Callable[[int], str]
"""Renders the n-th (1-based) parameter: ``$n`` for asyncpg, ``?n`` for SQLite."""

_COLUMN_RE = re.compile(r"^[a-z][a-z_]*$")

_FIRST_UNOWNED_RUN = """
    SELECT (SELECT next_run_at FROM saga_instances
            WHERE status = '{status}' AND owner IS NULL AND next_run_at IS NOT NULL
            ORDER BY next_run_at LIMIT 1) AS next_run_at"""

NEXT_RUNS: Final = " UNION ALL ".join(
    _FIRST_UNOWNED_RUN.format(status=status) for status in ("running", "compensating")
)
"""The earliest ``next_run_at`` of the ``running`` and of the ``compensating`` sagas nobody
holds (a row each, NULL when there is none): two walks of the ``(status, next_run_at)`` index
that stop at the first row."""


def earliest_run(rows: Iterable[Mapping[str, Any]]) -> datetime | None:
    """The earliest ``next_run_at`` of the rows of ``NEXT_RUNS``, None when all are NULL."""
    return min((row["next_run_at"] for row in rows if row["next_run_at"] is not None), default=None)


def column(name: str) -> str:
    """Return ``name`` if it is a plain lower-case column name, else raise ``ValueError``."""
    if not _COLUMN_RE.match(name):
        raise ValueError(f"not a column name: {name!r}")
    return name


def assignments(changes: Mapping[str, Any], param: Placeholder, first: int) -> str:
    """``a = $first, b = $first+1, ...`` for an UPDATE's SET list, in ``changes`` order."""
    return ", ".join(
        f"{column(name)} = {param(first + offset)}" for offset, name in enumerate(changes)
    )


def insert(
    table: str,
    columns: Sequence[str],
    param: Placeholder,
    wrap: Mapping[str, Callable[[str], str]] | None = None,
) -> str:
    """``INSERT INTO table (columns) VALUES (placeholders)``; ``wrap`` turns the placeholder of
    a column into an expression around it (e.g. "this value, or the database's clock")."""
    wrap = wrap or {}
    names = ", ".join(column(c) for c in columns)
    values = ", ".join(wrap.get(name, str)(param(n)) for n, name in enumerate(columns, start=1))
    return f"INSERT INTO {column(table)} ({names}) VALUES ({values})"


def row_values(rows: int, width: int, param: Placeholder, first: int) -> str:
    """``(p1, p2), (p3, p4), ...``: ``rows`` tuples of ``width`` parameters from ``first`` on,
    for a ``VALUES`` list whose length is the batch's."""
    return ", ".join(
        "(" + ", ".join(param(first + row * width + n) for n in range(width)) + ")"
        for row in range(rows)
    )


def page(
    where: ListFilter, limit: int, before: PageCursor | None, param: Placeholder
) -> tuple[str, list[Any]]:
    """The ``list_sagas`` query (newest first, keyset-paged) and its arguments."""
    args: list[Any] = []
    conditions: list[str] = []
    filters = (
        ("status", where.status),
        ("business_type", where.name),
        ("business_id", where.business_id),
    )
    for name, value in filters:
        if value is not None:
            args.append(str(value))
            conditions.append(f"{name} = {param(len(args))}")
    if before is not None:
        args += [before.created_at, before.saga_id]
        conditions.append(f"(created_at, id) < ({param(len(args) - 1)}, {param(len(args))})")
    args.append(limit)
    clause = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    sql = (
        f"SELECT * FROM saga_instances {clause}"
        f"ORDER BY created_at DESC, id DESC LIMIT {param(len(args))}"
    )
    return sql, args
