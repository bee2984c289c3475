"""``SagaStore``: the one saga-store API, with a ``StoreBackend`` composed in.

Public methods validate arguments, read the clock, check status transitions, turn refused
writes into the right exception (``LeaseLost``, ``SagaNotFound``, ``IllegalTransition``) and wrap
driver failures into ``StoreError``; the backend (``postgres``, ``sqlite``) runs the statements.

Fencing: every state-changing write is a ``WriteBatch`` given to ``write`` with the caller's
``Lease``, and only takes effect while ``saga_instances.lease_version`` (and ``owner``) still
match, checked in the statement that writes; every claim increments the version, so a replica
whose saga was taken over can never overwrite the new holder's work. A batch (instance, steps,
attempt rows and the lease's release) is one transaction, one commit: the engine records a
step's outcome together with the next step's announcement. Writes of state or data bump
``updated_at``; lease bookkeeping (claim, renew, release) does not. Time comes from the injected
clock (UTC), so both backends and the tests share one notion of "now".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from saga_runner.awaits import AwaitOutcome, CallbackAnswer, Verdict, judge
from saga_runner.errors import SagaNotFound, StoreError
from saga_runner.records import (
    Claim,
    CreateResult,
    JsonValue,
    Lease,
    NewStep,
    PageCursor,
    SagaDetail,
    SagaEvent,
    SagaInstance,
    SagaPage,
    StoredDefinition,
    from_row,
)
from saga_runner.states import ACTIVE_SAGA_STATUSES, SagaStatus
from saga_runner.store import policy
from saga_runner.store.backend import ListFilter, Row, StoreBackend, open_backend
from saga_runner.store.batch import WriteBatch
from saga_runner.store.policy import Clock, require_aware, require_positive, require_storable_id

MAX_PAGE_SIZE: Final = 1000
_ACTIVE: Final = frozenset(s.value for s in ACTIVE_SAGA_STATUSES)


class SagaStore:
    """Records saga instances, steps, attempts and events; one interface, several backends.

    Create one per process with ``from_url`` and ``close()`` it at shutdown (or use it as an
    async context manager). Every method may raise ``StoreError`` when the database is
    unreachable or fails.
    """

    def __init__(self, backend: StoreBackend, clock: Clock | None = None) -> None:
        self.backend = backend
        self._injected_clock = clock
        self._clock = clock or policy.utc_now
        self._closed = False

    @classmethod
    async def from_url(cls, url: str, base_dir: Path, *, clock: Clock | None = None) -> Self:
        """Connect to the saga store named by ``url`` (``sagas.store`` in the config).

        Args:
            url: ``postgresql://user@host:port/db[?schema=name&min_size=1&max_size=10]`` (or
                ``postgres://``), ``sqlite:///relative/path.db`` (resolved against
                ``base_dir``), ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``.
            base_dir: the directory relative SQLite paths are resolved against (the config's).
            clock: where "now" comes from (tests); defaults to the system clock in UTC for
                timestamps and to the DATABASE's clock for lease expiry (see ``lease_times``).

        Raises:
            StoreError: the URL is not supported or the database cannot be reached.
        """
        return cls(await open_backend(url, base_dir), clock)

    def now(self) -> datetime:
        """The store's current time (aware UTC, microsecond precision like the databases)."""
        return require_aware("clock()", self._clock())

    def lease_times(self, lease_seconds: float) -> tuple[datetime | None, datetime | None]:
        """``(now, expires)`` for lease arithmetic: both ``None`` mean the database's clock.

        Lease expiry is computed and compared by the database, in the statement that writes or
        claims it (``now() + lease`` on PostgreSQL, ``'now'`` on SQLite), so replicas whose wall
        clocks disagree still agree on when a lease expires. Only a clock injected by a test
        (``clock=``) replaces it, so tests can move time by hand.
        """
        if self._injected_clock is None:
            return None, None
        now = self.now()
        return now, now + timedelta(seconds=lease_seconds)

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
        name = self.backend.name
        if self._closed:
            raise StoreError(f"{name} saga store: {operation} after close()")
        try:
            yield
        except self.backend.driver_errors as exc:
            detail = self.backend.describe(exc)
            raise StoreError(f"{name} saga store: {operation} failed: {detail}") from exc

    # -- lifecycle ------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Create or upgrade the tables (safe when several replicas run it at once); return
        the migration versions applied by this call (empty when already up to date)."""
        with self._guard("migrate"):
            return await self.backend.migrate()

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        with self._guard("ping"):
            await self.backend.ping()

    async def close(self) -> None:
        """Close the connections; the store is unusable afterwards. Closing twice is a no-op."""
        if self._closed:
            return
        with self._guard("close"):
            self._closed = True
            await self.backend.close()

    # -- definitions and creation ---------------------------------------------------------------

    async def save_definition(
        self, definition_hash: str, name: str, body: JsonValue
    ) -> StoredDefinition:
        """Snapshot a definition version (``body``: enough to run an instance pinned to
        ``definition_hash``) and return what is stored: a hash already saved is left unchanged."""
        row = {"hash": definition_hash, "name": name, "body": body, "created_at": self.now()}
        with self._guard("save_definition"):
            await self.backend.insert_definition(row)
            stored = await self.backend.select_definition(definition_hash)
        if stored is None:
            raise StoreError(f"definition {definition_hash} vanished right after it was saved")
        return from_row(StoredDefinition, stored)

    async def get_definition(self, definition_hash: str) -> StoredDefinition | None:
        """The snapshot saved under ``definition_hash``, or ``None``."""
        with self._guard("get_definition"):
            row = await self.backend.select_definition(definition_hash)
        return None if row is None else from_row(StoredDefinition, row)

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
        client_scope: str | None = None,
        deadline_seconds: float | None = None,
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
            client_scope: who may read the instance through the sidecar's status URL (an
                opaque keyed hash of the trigger's scope; None: anyone with its id).
            deadline_seconds: the saga's ``deadline``: no forward step starts this long after
                its creation (``deadline_at``); None: no deadline.

        Returns:
            the new instance, its steps and its lease, or the existing instance (``created``
            False, no lease, no steps) when the idempotency key was already used.
        """
        require_positive("lease_seconds", lease_seconds)
        now = self.now()
        deadline_at = (
            None if deadline_seconds is None else now + timedelta(seconds=deadline_seconds)
        )
        new = policy.NewSaga(
            saga_id or str(uuid.uuid4()),
            business_type,
            business_id,
            definition_hash,
            mode,
            input_data,
            owner,
            lease_seconds,
            idempotency_key,
            started,
            client_scope,
            deadline_at,
        )
        instance, step_rows, event = policy.creation_rows(
            new, steps, now, self.lease_times(lease_seconds)[1]
        )
        with self._guard("create_instance"):
            inserted = await self.backend.insert_instance(instance, step_rows, event, lease_seconds)
            if inserted is None:
                row = await self.backend.select_by_idempotency_key(business_type, idempotency_key)
                if row is None:
                    raise StoreError(f"saga {new.saga_id}: insert refused but no duplicate found")
                return CreateResult(from_row(SagaInstance, row), None)
        row, step_ids = inserted
        saga = from_row(SagaInstance, row)
        written = policy.created_steps(step_rows, step_ids)
        return CreateResult(saga, Lease(saga.id, owner, saga.lease_version), written)

    # -- the write path -------------------------------------------------------------------------

    async def write(self, lease: Lease, batch: WriteBatch) -> SagaInstance:
        """Apply ``batch`` under ``lease`` in one transaction: all of it or nothing.

        The instance's ``updated_at`` is bumped (and ``completed_at`` / ``compensated_at`` set on
        entering those statuses), each step change is checked against ``STEP_TRANSITIONS`` and
        the saga status against ``SAGA_TRANSITIONS`` (the same status is allowed for
        running/compensating).

        Args:
            lease: the caller's lease; a stale one raises ``LeaseLost`` and changes nothing.
            batch: what to change; see ``WriteBatch``.

        Returns:
            the instance as written.
        """
        todo = policy.plan(lease, batch, self.now())
        with self._guard("write"):
            row = await self.backend.apply(
                lease, todo.sources, todo.changes, todo.steps, todo.attempts
            )
            if row is None:
                await policy.explain(self.backend, lease, batch)
        return from_row(SagaInstance, row)

    # -- leases ---------------------------------------------------------------------------------

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        """Extend the lease to ``lease_seconds`` from now; False when it was taken over (stop
        working on the saga then)."""
        require_positive("lease_seconds", lease_seconds)
        expires = self.lease_times(lease_seconds)[1]
        with self._guard("renew"):
            return await self.backend.renew(lease, expires, lease_seconds)

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
        expires = self.lease_times(lease_seconds)[1]
        with self._guard("renew_many"):
            renewed = await self.backend.renew_many(unique, expires, lease_seconds)
        return frozenset(unique).difference(renewed)

    async def release(self, lease: Lease, *, next_run_at: datetime | None = None) -> bool:
        """Give the saga up, so recovery may claim it at ``next_run_at`` (``None``: at once if
        active); False when the lease had already been taken over (nothing changed)."""
        if next_run_at is not None:
            next_run_at = require_aware("next_run_at", next_run_at)
        with self._guard("release"):
            return await self.backend.release(lease, next_run_at)

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
        now, expires = self.lease_times(lease_seconds)
        with self._guard("claim_due"):
            rows = await self.backend.claim_due(owner, now, expires, lease_seconds, limit)
        claims = [_claim(row) for row in rows]
        return sorted(claims, key=lambda c: (c.saga.created_at, c.saga.id))

    async def next_run(self) -> datetime | None:
        """When the next parked (or released) saga is due: the earliest ``next_run_at`` of the
        ``running`` and ``compensating`` sagas nobody holds, None when none has one. One cheap
        indexed query however many sagas wait (what ``claim_due`` will find due, and when)."""
        with self._guard("next_run"):
            return await self.backend.next_run()

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
        now, expires = self.lease_times(lease_seconds)
        with self._guard("claim_one"):
            row = await self.backend.claim_one(saga_id, owner, now, expires, lease_seconds, force)
            if row is None and await self.backend.select_instance(saga_id) is None:
                raise SagaNotFound(f"no saga {saga_id}")
        return None if row is None else _claim(row)

    # -- queries --------------------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaDetail:
        """The instance with its steps, attempts and events; ``SagaNotFound`` if absent."""
        require_storable_id(saga_id)
        with self._guard("get"):
            found = await self.backend.select_detail(saga_id)
        if found is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return policy.detail(*found)

    async def get_instance(self, saga_id: str) -> SagaInstance:
        """The instance row alone (cheaper than ``get``); ``SagaNotFound`` if absent."""
        require_storable_id(saga_id)
        with self._guard("get_instance"):
            row = await self.backend.select_instance(saga_id)
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
        if not policy.storable_lookup(name, business_id):
            return SagaPage((), None)
        where = ListFilter(status=status, name=name, business_id=business_id)
        with self._guard("list_sagas"):
            rows = await self.backend.select_page(where, limit + 1, before)
        items = tuple(from_row(SagaInstance, r) for r in rows[:limit])
        cursor = PageCursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
        return SagaPage(items, cursor)

    async def counts_by_status(self) -> dict[SagaStatus, int]:
        """How many instances are in each status (every status present, zero included)."""
        with self._guard("counts_by_status"):
            counts = await self.backend.count_by_status()
        return {status: counts.get(status.value, 0) for status in SagaStatus}

    async def in_flight_count(self) -> int:
        """How many instances are ``running`` or ``compensating``."""
        with self._guard("in_flight_count"):
            return await self.backend.count_in(_ACTIVE)

    async def oldest_unfinished_created_at(self) -> datetime | None:
        """When the oldest ``running`` or ``compensating`` instance was created, if any."""
        with self._guard("oldest_unfinished_created_at"):
            return await self.backend.oldest_in(_ACTIVE)

    # -- awaits ---------------------------------------------------------------------------------

    async def add_callback_token(self, saga_id: str, step_order: int, hashed: str) -> None:
        """Bind a callback token (its sha256, ``awaits.token_hash``) to one step of one saga;
        done before the call carrying it is made."""
        row = {"token_hash": hashed, "saga_id": saga_id, "step_order": step_order}
        row["created_at"] = self.now()
        with self._guard("add_callback_token"):
            await self.backend.insert_token(row)

    async def callback(
        self, hashed: str, outcome: AwaitOutcome, result: JsonValue = None
    ) -> CallbackAnswer:
        """Apply a callback to the step its token names: record a ``success`` or ``failure``
        (the saga becomes due at once), or extend the wait on a ``heartbeat``.

        The database decides, in the statement that writes: the step must still have no
        outcome, its wait and its saga's deadline must not have passed, its saga must be
        ``running``. Whatever was refused is judged from the step's state (``awaits.judge``).
        """
        now = self.now()
        with self._guard("callback"):
            if outcome is AwaitOutcome.HEARTBEAT:
                done = await self.backend.extend_wait(hashed, now)
            else:
                done = await self.backend.record_outcome(hashed, outcome.value, result, now)
            state = await self.backend.token_state(hashed)
        verdict = Verdict.RECORDED if done else judge(state, outcome, now)
        if state is None:
            return CallbackAnswer(verdict)
        return CallbackAnswer(verdict, state["saga_id"], state["business_type"])

    async def stop_wait(
        self,
        saga_id: str,
        step_order: int,
        outcome: AwaitOutcome,
        *,
        force: bool = False,
        result: JsonValue = None,
    ) -> bool:
        """End a ``waiting`` step's wait with ``outcome`` (``timeout``: only once its
        ``wait_until`` has passed; ``force``: whenever; a poll's answer: its ``result``), unless
        an outcome was recorded first; return whether this call ended it."""
        with self._guard("stop_wait"):
            return await self.backend.stop_wait(
                saga_id, step_order, outcome.value, self.now(), force, result
            )

    async def waiting_counts(self) -> dict[str, int]:
        """How many steps wait for their outcome, by saga name."""
        with self._guard("waiting_counts"):
            return await self.backend.count_waiting()

    # -- events and retention -------------------------------------------------------------------

    async def record_event(
        self, saga_id: str, actor: str, action: str, detail: Mapping[str, JsonValue] | None = None
    ) -> SagaEvent:
        """Append an event (an operator action or a notable engine decision); not fenced.

        ``actor`` is who did it (``operator:alice``, ``replica:host-1``), ``action`` what
        (``retry``, ``abort``, ``lease_taken_over``), ``detail`` anything else worth keeping;
        ``SagaNotFound`` if the saga is absent.
        """
        row: Row = {"saga_id": saga_id, "at": self.now(), "actor": actor, "action": action}
        row["detail"] = dict(detail or {})
        with self._guard("record_event"):
            stored = await self.backend.insert_event(row)
        if stored is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return from_row(SagaEvent, stored)

    async def delete_finished_before(self, cutoff: datetime, batch_size: int = 500) -> int:
        """Delete at most ``batch_size`` completed/compensated sagas finished before ``cutoff``
        and return how many were deleted.

        Their steps, attempts and events go with them. ``failed`` sagas are kept for operators.
        Call again while it returns ``batch_size``. On PostgreSQL only one replica prunes at a
        time: a call made while another is deleting returns 0 at once.
        """
        require_positive("batch_size", batch_size)
        cutoff = require_aware("cutoff", cutoff)
        with self._guard("delete_finished_before"):
            return await self.backend.delete_finished(cutoff, batch_size)


def _claim(row: Row) -> Claim:
    saga = from_row(SagaInstance, row)
    return Claim(saga, Lease(saga.id, row["owner"], saga.lease_version))
