"""Fenced writes: every change to a saga's state carries the caller's ``Lease``.

``FencedWriter`` sits between ``SagaReader`` (``reads``) and ``SagaStore`` (``base``). Besides the
single-purpose writes (``set_saga_status``, ``set_step_status``, ``record_attempt``, ...), ``write``
applies a ``WriteBatch`` (instance, steps, attempt rows and the lease's release) in one
transaction, one commit: the engine's hot path records a step's outcome together with the next
step's announcement, so a 2-step saga needs three commits instead of a dozen. Each write takes
effect only while ``saga_instances.lease_version`` and ``owner`` still match the lease; a refused
write is explained by raising ``LeaseLost``, ``SagaNotFound`` or ``IllegalTransition``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NoReturn

from saga_runner.errors import LeaseLost, SagaNotFound, StoreError
from saga_runner.records import (
    UNSET,
    JsonValue,
    Lease,
    SagaInstance,
    SagaStep,
    StepAttempt,
    Unset,
    from_row,
)
from saga_runner.states import (
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    AttemptKind,
    SagaStatus,
    StepStatus,
)
from saga_runner.store.batch import SAGA_COLUMNS, STEP_COLUMNS, AttemptRecord, WriteBatch
from saga_runner.store.core import Row, StepUpdate, given, require_aware
from saga_runner.store.reads import SagaReader

_TIME_COLUMNS = frozenset({"next_run_at", "next_retry_at"})


def _columns(values: Mapping[str, JsonValue], allowed: frozenset[str], what: str) -> Row:
    """``values`` as a row to write, after checking the names and that datetimes are aware."""
    unknown = set(values).difference(allowed)
    if unknown:
        raise ValueError(f"a batch cannot set {what} columns {sorted(unknown)}")
    row = dict(values)
    for name in _TIME_COLUMNS.intersection(row):
        if isinstance(row[name], datetime):
            row[name] = require_aware(name, row[name])
    return row


def attempt_row(saga_id: str, record: AttemptRecord) -> Row:
    """The ``saga_step_attempts`` row for ``record`` (without its generated ``id``)."""
    return {
        "saga_id": saga_id,
        "step_order": record.step_order,
        "kind": record.kind.value,
        "attempt": record.attempt,
        "started_at": require_aware("started_at", record.started_at),
        "duration_ms": float(record.duration_ms),
        "status_code": record.status_code,
        "error": record.error,
    }


class FencedWriter(SagaReader):
    """The lease-fenced writes of ``SagaStore``."""

    async def write(self, lease: Lease, batch: WriteBatch) -> SagaInstance:
        """Apply ``batch`` under ``lease`` in one transaction: all of it or nothing.

        The instance's ``updated_at`` is bumped (and ``completed_at`` / ``compensated_at`` set on
        entering those statuses), each step change is checked against ``STEP_TRANSITIONS`` and
        the saga status against ``SAGA_TRANSITIONS``, like the single-purpose writes.

        Args:
            lease: the caller's lease; a stale one raises ``LeaseLost`` and changes nothing.
            batch: what to change; see ``WriteBatch``.

        Returns:
            the instance as written.
        """
        now = self.now()
        changes = _columns(batch.saga_columns, SAGA_COLUMNS, "saga")
        if batch.release:
            changes.setdefault("next_run_at", None)
            changes.update(owner=None, lease_expires_at=None)
        sources: frozenset[str] | None = None
        status = batch.saga_status
        if status is not None:
            changes["status"] = status.value
            if status is SagaStatus.COMPLETED:
                changes["completed_at"] = now
            elif status is SagaStatus.COMPENSATED:
                changes["compensated_at"] = now
            sources = frozenset(s.value for s in SAGA_TRANSITIONS.sources(status))
        changes["updated_at"] = now
        steps: list[StepUpdate] = []
        for change in batch.steps:
            if any(step.step_order == change.step_order for step in steps):
                raise ValueError(f"a batch changes step {change.step_order} twice")
            columns = _columns(change.columns, STEP_COLUMNS, "step")
            columns.update(status=change.status.value, updated_at=now)
            step_sources = frozenset(s.value for s in STEP_TRANSITIONS.sources(change.status))
            steps.append(StepUpdate(change.step_order, step_sources, columns))
        attempts = [attempt_row(lease.saga_id, record) for record in batch.attempts]
        with self._guard("write"):
            row = await self._apply(lease, sources, changes, steps, attempts)
            if row is None:
                checks: list[tuple[int, StepStatus | None]] = [
                    (c.step_order, c.status) for c in batch.steps
                ]
                checks += [(a.step_order, None) for a in batch.attempts]
                await self._refused(lease, status, checks)
        return from_row(SagaInstance, row)

    async def set_saga_status(
        self,
        lease: Lease,
        status: SagaStatus,
        *,
        current_step: int | Unset | None = UNSET,
        failure_reason: str | Unset | None = UNSET,
        failed_step: int | Unset | None = UNSET,
        response: JsonValue | Unset = UNSET,
        next_run_at: datetime | Unset | None = UNSET,
    ) -> SagaInstance:
        """Move the saga to ``status`` (the same status is allowed for running/compensating).

        ``completed_at`` / ``compensated_at`` are set on entering those statuses.

        Args:
            lease: the caller's lease; a stale one raises ``LeaseLost`` and changes nothing.
            status: the new status, checked against ``SAGA_TRANSITIONS``.
            current_step: the ``step_order`` being worked on.
            failure_reason: why the saga is compensating or failed (shown to operators).
            failed_step: the ``step_order`` that failed.
            response: the sync response to replay (status, headers, body).
            next_run_at: when recovery should look at it next (persisted backoff).

        Returns:
            the instance as written.
        """
        if isinstance(next_run_at, datetime):
            next_run_at = require_aware("next_run_at", next_run_at)
        now = self.now()
        changes = given(
            current_step=current_step,
            failure_reason=failure_reason,
            failed_step=failed_step,
            response=response,
            next_run_at=next_run_at,
        )
        changes.update(status=status.value, updated_at=now)
        if status is SagaStatus.COMPLETED:
            changes["completed_at"] = now
        elif status is SagaStatus.COMPENSATED:
            changes["compensated_at"] = now
        sources = {s.value for s in SAGA_TRANSITIONS.sources(status)}
        with self._guard("set_saga_status"):
            row = await self._update_instance(lease, frozenset(sources), changes)
            if row is None:
                await self._refused(lease, status, ())
        return from_row(SagaInstance, row)

    async def set_next_run_at(self, lease: Lease, next_run_at: datetime | None) -> SagaInstance:
        """Persist when recovery should next resume this saga, keeping its status.

        Args:
            lease: the caller's lease.
            next_run_at: the time, or ``None`` for "as soon as it is not leased".
        """
        if next_run_at is not None:
            next_run_at = require_aware("next_run_at", next_run_at)
        changes: Row = {"next_run_at": next_run_at, "updated_at": self.now()}
        with self._guard("set_next_run_at"):
            row = await self._update_instance(lease, None, changes)
            if row is None:
                await self._refused(lease, None, ())
        return from_row(SagaInstance, row)

    async def set_step_status(
        self,
        lease: Lease,
        step_order: int,
        status: StepStatus,
        *,
        execute_data: JsonValue | Unset = UNSET,
        compensate_data: JsonValue | Unset = UNSET,
        result: JsonValue | Unset = UNSET,
        retry_count: int | Unset = UNSET,
        max_retry_count: int | Unset = UNSET,
        next_retry_at: datetime | Unset | None = UNSET,
        error: str | Unset | None = UNSET,
    ) -> SagaStep:
        """Move one step to ``status`` and record what was sent or answered.

        Args:
            lease: the caller's lease on the step's saga.
            step_order: which step (0-based).
            status: the new status, checked against ``STEP_TRANSITIONS``.
            execute_data: the rendered action request about to be sent.
            compensate_data: the rendered compensation request about to be sent.
            result: the answer (status, headers, body) of the last call.
            retry_count: attempts made so far.
            max_retry_count: attempts allowed.
            next_retry_at: when the next attempt is due.
            error: the last error (connection failure, timeout, unexpected status).

        Returns:
            the step as written.
        """
        if isinstance(next_retry_at, datetime):
            next_retry_at = require_aware("next_retry_at", next_retry_at)
        now = self.now()
        changes = given(
            execute_data=execute_data,
            compensate_data=compensate_data,
            result=result,
            retry_count=retry_count,
            max_retry_count=max_retry_count,
            next_retry_at=next_retry_at,
            error=error,
        )
        changes.update(status=status.value, updated_at=now)
        sources = frozenset(s.value for s in STEP_TRANSITIONS.sources(status))
        with self._guard("set_step_status"):
            row = await self._update_step(lease, step_order, sources, changes)
            if row is None:
                await self._refused(lease, None, [(step_order, status)])
        return from_row(SagaStep, row)

    async def record_attempt(
        self,
        lease: Lease,
        step_order: int,
        kind: AttemptKind,
        attempt: int,
        *,
        started_at: datetime,
        duration_ms: float,
        status_code: int | None = None,
        error: str | None = None,
    ) -> StepAttempt:
        """Record one HTTP call made for a step.

        Args:
            lease: the caller's lease on the step's saga.
            step_order: which step (0-based).
            kind: the action or its compensation.
            attempt: 1 for the first call of this kind, then 2, 3, ...
            started_at: when the call started.
            duration_ms: how long it took.
            status_code: the answer's status, if one arrived.
            error: what went wrong, if anything (connection refused, timeout, ...).
        """
        row: Row = {
            "saga_id": lease.saga_id,
            "step_order": step_order,
            "kind": kind.value,
            "attempt": attempt,
            "started_at": require_aware("started_at", started_at),
            "duration_ms": float(duration_ms),
            "status_code": status_code,
            "error": error,
        }
        with self._guard("record_attempt"):
            stored = await self._insert_attempt(lease, row)
            if stored is None:
                await self._refused(lease, None, [(step_order, None)])
        return from_row(StepAttempt, stored)

    async def _refused(
        self,
        lease: Lease,
        status: SagaStatus | None,
        steps: Sequence[tuple[int, StepStatus | None]],
    ) -> NoReturn:
        """Explain why a fenced write matched no row, by raising the matching exception.

        Args:
            lease: the lease the write carried.
            status: the saga status it wrote, if any.
            steps: the steps it changed (with their new status) or needed to exist (None).
        """
        instance = await self._select_instance(lease.saga_id)
        if instance is None:
            raise SagaNotFound(f"no saga {lease.saga_id}")
        if instance["lease_version"] != lease.version or instance["owner"] != lease.owner:
            raise LeaseLost(
                f"saga {lease.saga_id}: lease {lease.version} of {lease.owner!r} is stale; "
                f"now lease {instance['lease_version']} of {instance['owner']!r}"
            )
        if status is not None:
            SAGA_TRANSITIONS.check(SagaStatus(instance["status"]), status)
        for step_order, step_status in steps:
            step = await self._select_step(lease.saga_id, step_order)
            if step is None:
                raise SagaNotFound(f"saga {lease.saga_id} has no step {step_order}")
            if step_status is not None:
                STEP_TRANSITIONS.check(StepStatus(step["status"]), step_status)
        raise StoreError(f"saga {lease.saga_id}: write refused by a concurrent change")
