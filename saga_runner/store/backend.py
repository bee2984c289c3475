"""The primitives a saga-store backend implements: ``StoreBackend``, composed into ``SagaStore``.

Each primitive is one statement or one short transaction over plain rows (``dict`` of column ->
value with datetimes and JSON already decoded). The policy built on them (argument checks, the
clock, status transitions, explaining a refused write, wrapping driver errors) lives in
``SagaStore`` (``saga_store``) and ``policy``; the backends (``postgres``, ``sqlite``) only speak
their dialect. Every fenced primitive carries the ``Lease`` in the statement that changes the
row, so a write and a concurrent claim are strictly ordered by the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from saga_runner.errors import StoreError
from saga_runner.records import Lease, PageCursor
from saga_runner.states import SagaStatus

Row: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What ``list_sagas`` narrows on; ``None`` means "any"."""

    status: SagaStatus | None = None
    name: str | None = None
    business_id: str | None = None


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """One step change of ``apply``: the new column values, if its status is in ``sources``."""

    step_order: int
    sources: frozenset[str]
    changes: Row


class StoreBackend(ABC):
    """One database's saga tables, reached through a driver.

    ``name`` names the backend in errors; ``driver_errors`` lists the driver's exception types
    that ``SagaStore`` turns into ``StoreError``; ``describe`` may rephrase them (e.g. "run
    migrate" for a missing table).
    """

    name: ClassVar[str]
    driver_errors: ClassVar[tuple[type[BaseException], ...]]

    def describe(self, exc: BaseException) -> str:
        """How a driver error reads in a ``StoreError``."""
        return str(exc) or type(exc).__name__

    # -- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply the missing migrations; return the versions applied."""

    @abstractmethod
    async def ping(self) -> None:
        """A trivial query, bounded in time."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connections."""

    # -- definitions and creation ---------------------------------------------------------------

    @abstractmethod
    async def insert_definition(self, row: Row) -> None:
        """Insert unless the hash exists."""

    @abstractmethod
    async def select_definition(self, definition_hash: str) -> Row | None: ...

    @abstractmethod
    async def insert_instance(
        self, instance: Row, steps: list[Row], event: Row | None, lease_seconds: float
    ) -> tuple[Row, list[int]] | None:
        """Insert the instance, its steps (all with the same columns) and the event (if any) in
        one transaction (a ``lease_expires_at`` of None is ``lease_seconds`` from now by the
        database's clock); return the instance and the steps' ids in ``step_order``, or ``None``
        on a duplicate idempotency key (nothing inserted)."""

    @abstractmethod
    async def select_by_idempotency_key(
        self, business_type: str, key: str | None
    ) -> Row | None: ...

    # -- the fenced write -----------------------------------------------------------------------

    @abstractmethod
    async def apply(
        self,
        lease: Lease,
        sources: frozenset[str] | None,
        changes: Row,
        steps: Sequence[StepUpdate],
        attempts: Sequence[Row],
    ) -> Row | None:
        """In one transaction, if the lease matches, the saga's status is in ``sources`` (unless
        None), every step's status is in its ``sources`` and every attempt's step exists: update
        the instance with ``changes``, the steps, insert the attempts; return the instance as
        written. Otherwise change nothing and return ``None``."""

    # -- leases: `now`/`expires` None mean the database's clock, read in the statement --------

    @abstractmethod
    async def renew(self, lease: Lease, expires: datetime | None, seconds: float) -> bool:
        """Set ``lease_expires_at`` if the lease still matches."""

    @abstractmethod
    async def renew_many(
        self, leases: Sequence[Lease], expires: datetime | None, seconds: float
    ) -> set[Lease]:
        """Extend, in one statement or transaction, every lease still matching its saga's row
        (id, owner and version); return the leases extended."""

    @abstractmethod
    async def release(self, lease: Lease, next_run_at: datetime | None) -> bool:
        """Clear the owner and expiry if the lease still matches; set ``next_run_at`` when
        given, else keep the one recorded (a persisted backoff survives a release)."""

    @abstractmethod
    async def claim_due(
        self, owner: str, now: datetime | None, expires: datetime | None, seconds: float, limit: int
    ) -> list[Row]: ...

    @abstractmethod
    async def next_run(self) -> datetime | None:
        """The earliest ``next_run_at`` of the active sagas nobody holds (``sqltext.NEXT_RUNS``)."""

    @abstractmethod
    async def claim_one(
        self,
        saga_id: str,
        owner: str,
        now: datetime | None,
        expires: datetime | None,
        seconds: float,
        force: bool,
    ) -> Row | None: ...

    # -- reads ----------------------------------------------------------------------------------

    @abstractmethod
    async def select_instance(self, saga_id: str) -> Row | None: ...

    @abstractmethod
    async def select_step(self, saga_id: str, step_order: int) -> Row | None: ...

    @abstractmethod
    async def select_detail(
        self, saga_id: str
    ) -> tuple[Row, list[Row], list[Row], list[Row]] | None:
        """The instance, its steps, attempts and events, read consistently."""

    @abstractmethod
    async def select_page(
        self, where: ListFilter, limit: int, before: PageCursor | None
    ) -> list[Row]: ...

    @abstractmethod
    async def count_by_status(self) -> dict[str, int]: ...

    @abstractmethod
    async def count_in(self, statuses: frozenset[str]) -> int: ...

    @abstractmethod
    async def oldest_in(self, statuses: frozenset[str]) -> datetime | None: ...

    # -- awaits: callback tokens and the outcome that ends a wait (``saga_runner.awaits``) ------

    @abstractmethod
    async def insert_token(self, row: Row) -> None:
        """Insert a ``saga_callback_tokens`` row (its step must exist)."""

    @abstractmethod
    async def record_outcome(
        self, token_hash: str, outcome: str, result: Any, now: datetime
    ) -> bool:
        """In one statement or transaction: set the outcome of the step the token names if that
        step is ``running`` or ``waiting`` with no outcome yet and its wait has not passed
        ``now``, and its saga is ``running`` and not past its deadline; mark the saga due now
        (``next_run_at``). Return whether it was set."""

    @abstractmethod
    async def extend_wait(self, token_hash: str, now: datetime) -> bool:
        """Under the same conditions, for a ``waiting`` step: move its ``wait_until`` to ``now``
        plus its ``wait_seconds`` and the saga's ``next_run_at`` to the earlier of that and its
        deadline (when nobody holds the saga). Return whether it moved."""

    @abstractmethod
    async def token_state(self, token_hash: str) -> Row | None:
        """The step and saga a token names (``saga_id``, ``step_order``, ``status``,
        ``await_outcome``, ``wait_until``, ``saga_status``, ``deadline_at``,
        ``business_type``), or None for an unknown token."""

    @abstractmethod
    async def stop_wait(
        self,
        saga_id: str,
        step_order: int,
        outcome: str,
        now: datetime,
        force: bool,
        result: Any = None,
    ) -> bool:
        """Set the outcome (and result) of a ``waiting`` step that has none, if its wait has
        passed ``now`` (or ``force``); return whether it was set."""

    @abstractmethod
    async def count_waiting(self) -> dict[str, int]:
        """How many steps are ``waiting``, by saga name."""

    # -- events and retention -------------------------------------------------------------------

    @abstractmethod
    async def insert_event(self, row: Row) -> Row | None:
        """Insert if the saga exists, else ``None``."""

    @abstractmethod
    async def delete_finished(self, cutoff: datetime, limit: int) -> int: ...


async def open_backend(url: str, base_dir: Path) -> StoreBackend:
    """Connect to the backend named by ``url`` (see ``SagaStore.from_url``).

    Raises:
        StoreError: the URL is not supported or the database cannot be reached.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from saga_runner.store.postgres import PostgresBackend

        return await PostgresBackend.connect(url)
    if url.startswith("sqlite:///"):
        from saga_runner.store.sqlite import SqliteBackend

        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        if not path:
            raise StoreError(f"no database path in saga store URL {url!r}")
        return await SqliteBackend.connect(path if path == ":memory:" else base_dir / path)
    raise StoreError(
        f"unsupported saga store URL {url!r}: expected postgresql://, postgres:// or sqlite:///"
    )
