"""The saga store: where saga instances, steps, attempts and events are recorded.

``SagaStore`` is the one API (``await SagaStore.from_url(url, base_dir)``); it composes a
``StoreBackend`` (``postgres``: PostgreSQL via asyncpg, ``sqlite``: SQLite via aiosqlite) that
runs the statements. Every change of a saga's state is a ``WriteBatch`` given to
``SagaStore.write`` under the caller's lease. Both backends share one contract, enforced by one
test suite.
"""

from __future__ import annotations

from saga_runner.store.backend import StoreBackend
from saga_runner.store.batch import AttemptRecord, StepChange, WriteBatch
from saga_runner.store.saga_store import MAX_PAGE_SIZE, SagaStore

__all__ = [
    "MAX_PAGE_SIZE",
    "AttemptRecord",
    "SagaStore",
    "StepChange",
    "StoreBackend",
    "WriteBatch",
]
