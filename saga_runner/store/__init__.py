"""The saga store: where saga instances, steps, attempts and events are recorded.

``open_store(url, base_dir)`` returns a ``SagaStore`` backed by PostgreSQL (``postgresql://``) or
SQLite (``sqlite:///``). Both backends share one contract, enforced by one test suite.
"""

from __future__ import annotations

from saga_runner.store.base import SagaStore, open_store

__all__ = ["SagaStore", "open_store"]
