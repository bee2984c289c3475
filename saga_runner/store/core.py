"""The lowest layer of the saga store: clock, error wrapping and the backend primitives.

``StoreCore`` declares the small abstract ``_underscore`` methods each backend (``postgres``,
``sqlite``) implements: one statement or one short transaction over plain rows (``dict`` of
column -> value with datetimes and JSON already decoded). The policy built on them lives in
``reads`` (queries for operators and probes) and ``base`` (``SagaStore``: writes and leases).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias

from saga_runner.errors import StoreError
from saga_runner.records import UNSET, Lease, PageCursor
from saga_runner.states import SagaStatus

Row: TypeAlias = dict[str, Any]
Clock: TypeAlias = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: an aware UTC ``datetime``."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What ``list_sagas`` narrows on; ``None`` means "any"."""

    status: SagaStatus | None = None
    name: str | None = None
    business_id: str | None = None


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """One step change of ``_apply``: the new column values, if its status is in ``sources``."""

    step_order: int
    sources: frozenset[str]
    changes: Row


def require_aware(name: str, value: datetime) -> datetime:
    """``value`` converted to UTC; ``ValueError`` naming ``name`` when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def require_positive(name: str, value: float) -> None:
    """``ValueError`` naming ``name`` unless ``value`` > 0."""
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


def given(**values: object) -> Row:
    """The keyword arguments that are not ``UNSET``: the columns a write changes."""
    return {key: value for key, value in values.items() if value is not UNSET}


class StoreCore(ABC):
    """The clock, driver-error wrapping and the abstract primitives every backend implements.

    ``driver_errors`` lists the backend's exception types that ``_guard`` turns into
    ``StoreError``; ``_describe`` may rephrase them (e.g. "run migrate" for a missing table).
    """

    backend: ClassVar[str]
    driver_errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or utc_now
        self._closed = False

    def now(self) -> datetime:
        """The store's current time (aware UTC, microsecond precision like the databases)."""
        return require_aware("clock()", self._clock())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        if self._closed:
            raise StoreError(f"{self.backend} saga store: {operation} after close()")
        try:
            yield
        except self.driver_errors as exc:
            raise StoreError(
                f"{self.backend} saga store: {operation} failed: {self._describe(exc)}"
            ) from exc

    def _describe(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    # -- lifecycle ------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Create or upgrade the tables; safe when several replicas run it at once.

        Returns:
            the migration versions applied by this call (empty when already up to date).
        """
        with self._guard("migrate"):
            return await self._migrate()

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        with self._guard("ping"):
            await self._ping()

    async def close(self) -> None:
        """Close the connections; the store is unusable afterwards. Closing twice is a no-op."""
        if self._closed:
            return
        with self._guard("close"):
            self._closed = True
            await self._close()

    # -- backend primitives ---------------------------------------------------------------------

    @abstractmethod
    async def _migrate(self) -> list[int]: ...

    @abstractmethod
    async def _ping(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _insert_definition(self, row: Row) -> None:
        """Insert unless the hash exists."""

    @abstractmethod
    async def _select_definition(self, definition_hash: str) -> Row | None: ...

    @abstractmethod
    async def _insert_instance(
        self, instance: Row, steps: list[Row], event: Row | None
    ) -> tuple[Row, list[int]] | None:
        """Insert the instance, its steps (all with the same columns) and the event (if any) in
        one transaction; return the instance and the steps' ids in ``step_order``, or ``None``
        on a duplicate idempotency key (nothing inserted)."""

    @abstractmethod
    async def _select_by_idempotency_key(
        self, business_type: str, key: str | None
    ) -> Row | None: ...

    @abstractmethod
    async def _update_instance(
        self, lease: Lease, sources: frozenset[str] | None, changes: Row
    ) -> Row | None:
        """Update if the lease matches and (unless ``sources`` is None) the status is in it."""

    @abstractmethod
    async def _update_step(
        self, lease: Lease, step_order: int, sources: frozenset[str], changes: Row
    ) -> Row | None:
        """Update the step if the lease matches and its status is in ``sources``; bump the
        instance's ``updated_at`` to ``changes["updated_at"]`` in the same transaction."""

    @abstractmethod
    async def _apply(
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

    @abstractmethod
    async def _insert_attempt(self, lease: Lease, row: Row) -> Row | None:
        """Insert if the lease matches and the step exists."""

    @abstractmethod
    async def _select_instance(self, saga_id: str) -> Row | None: ...

    @abstractmethod
    async def _select_step(self, saga_id: str, step_order: int) -> Row | None: ...

    @abstractmethod
    async def _renew(self, lease: Lease, expires: datetime) -> bool: ...

    @abstractmethod
    async def _renew_many(self, leases: Sequence[Lease], expires: datetime) -> set[Lease]:
        """Extend, in one statement or transaction, every lease still matching its saga's row
        (id, owner and version); return the leases extended."""

    @abstractmethod
    async def _release(self, lease: Lease, next_run_at: datetime | None) -> bool: ...

    @abstractmethod
    async def _claim_due(
        self, owner: str, now: datetime, expires: datetime, limit: int
    ) -> list[Row]: ...

    @abstractmethod
    async def _claim_one(
        self, saga_id: str, owner: str, now: datetime, expires: datetime, force: bool
    ) -> Row | None: ...

    @abstractmethod
    async def _select_detail(
        self, saga_id: str
    ) -> tuple[Row, list[Row], list[Row], list[Row]] | None:
        """The instance, its steps, attempts and events, read consistently."""

    @abstractmethod
    async def _select_page(
        self, where: ListFilter, limit: int, before: PageCursor | None
    ) -> list[Row]: ...

    @abstractmethod
    async def _count_by_status(self) -> dict[str, int]: ...

    @abstractmethod
    async def _count_in(self, statuses: frozenset[str]) -> int: ...

    @abstractmethod
    async def _oldest_in(self, statuses: frozenset[str]) -> datetime | None: ...

    @abstractmethod
    async def _insert_event(self, row: Row) -> Row | None:
        """Insert if the saga exists, else ``None``."""

    @abstractmethod
    async def _delete_finished(self, cutoff: datetime, limit: int) -> int: ...
