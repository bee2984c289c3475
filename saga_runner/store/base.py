"""The ``SagaStore`` interface: shared policy here, small SQL primitives per backend.

Public methods validate arguments, read the clock, check status transitions, turn refused
writes into the right exception (``LeaseLost``, ``SagaNotFound``, ``IllegalTransition``) and wrap
driver failures into ``StoreError``. Backends (``postgres``, ``sqlite``) implement the abstract
``_underscore`` methods, each one statement or one short transaction over plain rows
(``dict`` of column -> value with datetimes and JSON already decoded). The layers: ``core``
(``StoreCore``: clock, error wrapping, lifecycle, the abstract primitives) <- ``reads``
(``SagaReader``: queries, events, retention) <- ``writes`` (``FencedWriter``: fenced writes,
batches) <- this module (``SagaStore``: definitions, creation, leases) and ``open_store``.

Fencing: every state-changing write carries the caller's ``Lease`` and only takes effect while
``saga_instances.lease_version`` (and ``owner``) still match; every claim increments the version,
so a replica whose saga was taken over can never overwrite the new holder's work. Writes of
state or data bump ``updated_at``; lease bookkeeping (claim, renew, release) does not. Time comes
from the injected clock (UTC), so both backends and the tests share one notion of "now".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from saga_runner.errors import SagaNotFound, StoreError
from saga_runner.records import (
    Claim,
    CreateResult,
    JsonValue,
    Lease,
    NewStep,
    SagaInstance,
    SagaStep,
    StoredDefinition,
    from_row,
)
from saga_runner.states import SagaStatus, StepStatus
from saga_runner.store.core import Clock, Row, require_aware, require_positive
from saga_runner.store.reads import require_storable_id
from saga_runner.store.writes import FencedWriter

_NEW_STEP: Row = {
    "compensate_data": None,
    "result": None,
    "next_retry_at": None,
    "error": None,
}


class SagaStore(FencedWriter):
    """Records saga instances, steps, attempts and events; one interface, several backends.

    Create one per process with ``open_store`` and ``close()`` it at shutdown (or use it as an
    async context manager). Every method may raise ``StoreError`` when the database is
    unreachable or fails.
    """

    # -- definitions ----------------------------------------------------------------------------

    async def save_definition(
        self, definition_hash: str, name: str, body: JsonValue
    ) -> StoredDefinition:
        """Snapshot a definition version; a hash already saved is left unchanged.

        Args:
            definition_hash: the version's content hash (``saga_definitions`` primary key).
            name: the saga name.
            body: the definition as JSON, enough to run an instance pinned to this hash.

        Returns:
            the stored snapshot (the first one saved under this hash).
        """
        row = {"hash": definition_hash, "name": name, "body": body, "created_at": self.now()}
        with self._guard("save_definition"):
            await self._insert_definition(row)
            stored = await self._select_definition(definition_hash)
        if stored is None:
            raise StoreError(f"definition {definition_hash} vanished right after it was saved")
        return from_row(StoredDefinition, stored)

    async def get_definition(self, definition_hash: str) -> StoredDefinition | None:
        """The snapshot saved under ``definition_hash``, or ``None``.

        Args:
            definition_hash: the version's content hash.
        """
        with self._guard("get_definition"):
            row = await self._select_definition(definition_hash)
        return None if row is None else from_row(StoredDefinition, row)

    # -- creation -------------------------------------------------------------------------------

    async def create_instance(
        self,
        *,
        business_type: str,
        business_id: str | None,
        definition_hash: str,
        mode: str,
        input_data: JsonValue,
        steps: Sequence[NewStep],
        owner: str,
        lease_seconds: float,
        idempotency_key: str | None = None,
        saga_id: str | None = None,
        started: Mapping[str, JsonValue] | None = None,
    ) -> CreateResult:
        """Insert a ``running`` instance claimed by ``owner`` and its steps atomically.

        One statement on PostgreSQL (one transaction on SQLite) writes the instance, its steps
        and, when given, its ``started`` event; a step created ``running`` (see ``NewStep``)
        becomes the instance's ``current_step``, so a run's first call is announced by the same
        commit that creates the saga.

        Args:
            business_type: the saga name.
            business_id: the rendered ``business_id`` template (searchable).
            definition_hash: the saved definition version this instance is pinned to.
            mode: ``sync`` or ``async``.
            input_data: the trigger's JSON body.
            steps: the steps in order; their ``step_order`` is their index (0-based).
            owner: the replica creating it, which holds the first lease.
            lease_seconds: how long the lease lasts unless renewed.
            idempotency_key: the trigger's key; a second instance with the same
                ``(business_type, idempotency_key)`` is never created.
            saga_id: the new instance's id; a random UUID when omitted.
            started: the detail of a ``started`` event (actor ``owner``) written with it.

        Returns:
            the new instance, its steps and its lease, or the existing instance (``created``
            False, no lease, no steps) when the idempotency key was already used.
        """
        require_positive("lease_seconds", lease_seconds)
        now = self.now()
        saga_id = saga_id or str(uuid.uuid4())
        running = [n for n, step in enumerate(steps) if step.status is StepStatus.RUNNING]
        instance: Row = {
            "id": saga_id,
            "business_type": business_type,
            "business_id": business_id,
            "status": SagaStatus.RUNNING.value,
            "current_step": running[0] if running else None,
            "input": input_data,
            "definition_hash": definition_hash,
            "idempotency_key": idempotency_key,
            "mode": mode,
            "owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "lease_version": 1,
            "created_at": now,
            "updated_at": now,
        }
        step_rows = [
            {
                "saga_id": saga_id,
                "step_order": order,
                "step_name": step.name,
                "status": step.status.value,
                "execute_data": step.execute_data,
                "retry_count": step.retry_count,
                "max_retry_count": step.max_retry_count,
                "created_at": now,
                "updated_at": now,
            }
            for order, step in enumerate(steps)
        ]
        event: Row | None = None
        if started is not None:
            detail = dict(started)
            event = {"saga_id": saga_id, "at": now, "actor": owner, "action": "started"}
            event["detail"] = detail
        with self._guard("create_instance"):
            inserted = await self._insert_instance(instance, step_rows, event)
            if inserted is None:
                row = await self._select_by_idempotency_key(business_type, idempotency_key)
                if row is None:
                    raise StoreError(f"saga {saga_id}: insert refused but no duplicate found")
                return CreateResult(from_row(SagaInstance, row), None)
        row, step_ids = inserted
        saga = from_row(SagaInstance, row)
        written = tuple(
            from_row(SagaStep, {**_NEW_STEP, **step, "id": step_id})
            for step, step_id in zip(step_rows, step_ids, strict=True)
        )
        return CreateResult(saga, Lease(saga.id, owner, saga.lease_version), written)

    # -- leases ---------------------------------------------------------------------------------

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        """Extend the lease; False when it was taken over (stop working on the saga then).

        Args:
            lease: the caller's lease.
            lease_seconds: the new expiry, counted from now.
        """
        require_positive("lease_seconds", lease_seconds)
        expires = self.now() + timedelta(seconds=lease_seconds)
        with self._guard("renew"):
            return await self._renew(lease, expires)

    async def renew_many(self, leases: Iterable[Lease], lease_seconds: float) -> frozenset[Lease]:
        """Extend many leases at once: one statement on PostgreSQL, one transaction on SQLite.

        This is how a process keeps every saga it runs (``saga_runner.leases``): one round
        trip per renewal round, however many sagas it holds. A lease is extended only while
        its saga's row still names it (same owner and version), like ``renew``.

        Args:
            leases: the caller's leases; a lease given twice is renewed once.
            lease_seconds: the new expiry of all of them, counted from now.

        Returns:
            the leases that were not renewed because they are lost: the saga was claimed by a
            newer lease (another replica, an operator, or this replica again), released, or
            deleted. Stop working on those sagas; every other lease was extended.
        """
        require_positive("lease_seconds", lease_seconds)
        unique = list(dict.fromkeys(leases))
        if not unique:
            return frozenset()
        expires = self.now() + timedelta(seconds=lease_seconds)
        with self._guard("renew_many"):
            renewed = await self._renew_many(unique, expires)
        return frozenset(unique).difference(renewed)

    async def release(self, lease: Lease, *, next_run_at: datetime | None = None) -> bool:
        """Give the saga up, so recovery may claim it (at ``next_run_at`` if given).

        Args:
            lease: the caller's lease.
            next_run_at: when the saga should next be resumed; ``None``: at once if active.

        Returns:
            False when the lease had already been taken over (nothing changed).
        """
        if next_run_at is not None:
            next_run_at = require_aware("next_run_at", next_run_at)
        with self._guard("release"):
            return await self._release(lease, next_run_at)

    async def claim_due(self, owner: str, lease_seconds: float, limit: int) -> list[Claim]:
        """Atomically claim active sagas nobody holds and whose ``next_run_at`` has come.

        A saga is due when it is ``running`` or ``compensating``, its lease is absent or
        expired, and its ``next_run_at`` is absent or past. Concurrent callers never get the
        same saga. Claiming increments ``lease_version`` and clears ``next_run_at``.

        Args:
            owner: the claiming replica.
            lease_seconds: how long the new leases last unless renewed.
            limit: the most sagas to claim (oldest first).
        """
        require_positive("lease_seconds", lease_seconds)
        require_positive("limit", limit)
        now = self.now()
        expires = now + timedelta(seconds=lease_seconds)
        with self._guard("claim_due"):
            rows = await self._claim_due(owner, now, expires, limit)
        claims = [self._claim(row) for row in rows]
        return sorted(claims, key=lambda c: (c.saga.created_at, c.saga.id))

    async def claim_one(
        self, saga_id: str, owner: str, lease_seconds: float, *, force: bool = False
    ) -> Claim | None:
        """Claim one saga in any status, for an operator retry or abort.

        Args:
            saga_id: the saga to claim.
            owner: who claims it (e.g. ``operator:alice`` or a replica id).
            lease_seconds: how long the lease lasts unless renewed.
            force: take it even from a live holder, whose next write then gets ``LeaseLost``.

        Returns:
            the claim, or ``None`` when someone else holds an unexpired lease and not ``force``.
        """
        require_positive("lease_seconds", lease_seconds)
        require_storable_id(saga_id)
        now = self.now()
        expires = now + timedelta(seconds=lease_seconds)
        with self._guard("claim_one"):
            row = await self._claim_one(saga_id, owner, now, expires, force)
            if row is None and await self._select_instance(saga_id) is None:
                raise SagaNotFound(f"no saga {saga_id}")
        return None if row is None else self._claim(row)

    @staticmethod
    def _claim(row: Row) -> Claim:
        saga = from_row(SagaInstance, row)
        return Claim(saga, Lease(saga.id, row["owner"], saga.lease_version))


async def open_store(url: str, base_dir: Path, *, clock: Clock | None = None) -> SagaStore:
    """Connect to the saga store named by ``url`` (``sagas.store`` in the config).

    Args:
        url: ``postgresql://user@host:port/db[?schema=name&min_size=1&max_size=10]`` (or
            ``postgres://``), ``sqlite:///relative/path.db`` (resolved against ``base_dir``),
            ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``.
        base_dir: the directory relative SQLite paths are resolved against (the config's).
        clock: where "now" comes from (tests); defaults to the system clock in UTC.

    Raises:
        StoreError: the URL is not supported or the database cannot be reached.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from saga_runner.store.postgres import PostgresStore

        return await PostgresStore.connect(url, clock=clock)
    if url.startswith("sqlite:///"):
        from saga_runner.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        if not path:
            raise StoreError(f"no database path in saga store URL {url!r}")
        target = path if path == ":memory:" else base_dir / path
        return await SqliteStore.connect(target, clock=clock)
    raise StoreError(
        f"unsupported saga store URL {url!r}: expected postgresql://, postgres:// or sqlite:///"
    )
