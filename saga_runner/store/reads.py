"""The read side of the saga store: what the admin API, dashboard and probes ask.

``SagaReader`` adds instance lookups, the newest-first paged list, counts, operator events and
retention to ``StoreCore``; ``SagaStore`` (in ``base``) adds the engine's writes and leases.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from saga_runner.errors import SagaNotFound
from saga_runner.records import (
    JsonValue,
    PageCursor,
    SagaDetail,
    SagaEvent,
    SagaInstance,
    SagaPage,
    SagaStep,
    StepAttempt,
    from_row,
)
from saga_runner.states import ACTIVE_SAGA_STATUSES, SagaStatus
from saga_runner.storable import clean_text
from saga_runner.store.core import ListFilter, Row, StoreCore, require_aware, require_positive

MAX_PAGE_SIZE = 1000


def storable_lookup(*values: str | None) -> bool:
    """Whether every value could be stored: one holding NUL or an unpaired surrogate can
    match no row (and PostgreSQL would refuse the query itself, as if it were down)."""
    return all(value is None or clean_text(value) == value for value in values)


def require_storable_id(saga_id: str) -> None:
    """Raise ``SagaNotFound`` for an id that no stored saga can have."""
    if not storable_lookup(saga_id):
        raise SagaNotFound(f"no saga {saga_id!r}")


class SagaReader(StoreCore):
    """Queries, events and retention over the saga tables (see ``SagaStore``)."""

    # -- queries --------------------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaDetail:
        """The instance with its steps, attempts and events; ``SagaNotFound`` if absent.

        Args:
            saga_id: the saga's id.
        """
        require_storable_id(saga_id)
        with self._guard("get"):
            found = await self._select_detail(saga_id)
        if found is None:
            raise SagaNotFound(f"no saga {saga_id}")
        instance, steps, attempts, events = found
        return SagaDetail(
            instance=from_row(SagaInstance, instance),
            steps=tuple(from_row(SagaStep, r) for r in steps),
            attempts=tuple(from_row(StepAttempt, r) for r in attempts),
            events=tuple(from_row(SagaEvent, r) for r in events),
        )

    async def get_instance(self, saga_id: str) -> SagaInstance:
        """The instance row alone (cheaper than ``get``); ``SagaNotFound`` if absent.

        Args:
            saga_id: the saga's id.
        """
        require_storable_id(saga_id)
        with self._guard("get_instance"):
            row = await self._select_instance(saga_id)
        if row is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return from_row(SagaInstance, row)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        business_id: str | None = None,
        limit: int = 50,
        before: PageCursor | None = None,
    ) -> SagaPage:
        """Instances newest first (by ``created_at``, then id), one page at a time.

        Args:
            status: only this status.
            name: only this saga name (``business_type``).
            business_id: only this business id.
            limit: page size, 1 to ``MAX_PAGE_SIZE``.
            before: the previous page's ``next_cursor``.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        if before is not None:
            before = PageCursor(
                require_aware("before.created_at", before.created_at), before.saga_id
            )
        if not storable_lookup(name, business_id):
            return SagaPage((), None)
        where = ListFilter(status=status, name=name, business_id=business_id)
        with self._guard("list_sagas"):
            rows = await self._select_page(where, limit + 1, before)
        items = tuple(from_row(SagaInstance, r) for r in rows[:limit])
        more = len(rows) > limit
        cursor = PageCursor(items[-1].created_at, items[-1].id) if more else None
        return SagaPage(items, cursor)

    async def counts_by_status(self) -> dict[SagaStatus, int]:
        """How many instances are in each status (every status present, zero included)."""
        with self._guard("counts_by_status"):
            counts = await self._count_by_status()
        return {status: counts.get(status.value, 0) for status in SagaStatus}

    async def in_flight_count(self) -> int:
        """How many instances are ``running`` or ``compensating``."""
        with self._guard("in_flight_count"):
            return await self._count_in(frozenset(s.value for s in ACTIVE_SAGA_STATUSES))

    async def oldest_unfinished_created_at(self) -> datetime | None:
        """When the oldest ``running`` or ``compensating`` instance was created, if any."""
        with self._guard("oldest_unfinished_created_at"):
            return await self._oldest_in(frozenset(s.value for s in ACTIVE_SAGA_STATUSES))

    # -- events and retention -------------------------------------------------------------------

    async def record_event(
        self, saga_id: str, actor: str, action: str, detail: Mapping[str, JsonValue] | None = None
    ) -> SagaEvent:
        """Append an event (an operator action or a notable engine decision); not fenced.

        Args:
            saga_id: the saga it concerns; ``SagaNotFound`` if absent.
            actor: who did it (``operator:alice``, ``replica:host-1``).
            action: what (``retry``, ``abort``, ``lease_taken_over``).
            detail: anything else worth keeping, as a JSON object.
        """
        row: Row = {
            "saga_id": saga_id,
            "at": self.now(),
            "actor": actor,
            "action": action,
            "detail": dict(detail or {}),
        }
        with self._guard("record_event"):
            stored = await self._insert_event(row)
        if stored is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return from_row(SagaEvent, stored)

    async def delete_finished_before(self, cutoff: datetime, batch_size: int = 500) -> int:
        """Delete at most ``batch_size`` completed/compensated sagas finished before ``cutoff``.

        Their steps, attempts and events go with them. ``failed`` sagas are kept for operators.
        Call again while it returns ``batch_size``. On PostgreSQL only one replica prunes at a
        time: a call made while another is deleting returns 0 at once.

        Args:
            cutoff: delete sagas whose ``completed_at``/``compensated_at`` is earlier.
            batch_size: the most instances deleted by this call.

        Returns:
            how many instances were deleted.
        """
        require_positive("batch_size", batch_size)
        cutoff = require_aware("cutoff", cutoff)
        with self._guard("delete_finished_before"):
            return await self._delete_finished(cutoff, batch_size)
