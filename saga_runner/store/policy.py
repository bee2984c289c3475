"""The saga store's rules that need no database: argument checks and the rows a write sends.

``plan`` turns a ``WriteBatch`` into what ``StoreBackend.apply`` takes (checking column names,
the status transitions a change may come from, and that datetimes are aware); ``explain``
raises the exception that says why a fenced write matched no row (``LeaseLost``,
``SagaNotFound``, ``IllegalTransition``); ``creation_rows`` builds a new saga's rows and
``detail`` / ``created_steps`` turn rows back into records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NoReturn, TypeAlias

from saga_runner.errors import LeaseLost, SagaNotFound, StoreError
from saga_runner.records import (
    JsonValue,
    Lease,
    NewStep,
    SagaDetail,
    SagaEvent,
    SagaInstance,
    SagaStep,
    StepAttempt,
    from_row,
)
from saga_runner.states import SAGA_TRANSITIONS, SagaStatus, StepStatus, step_transitions
from saga_runner.storable import clean_text
from saga_runner.store.backend import Row, StepUpdate, StoreBackend
from saga_runner.store.batch import (
    SAGA_COLUMNS,
    STEP_COLUMNS,
    AttemptRecord,
    StepChange,
    WriteBatch,
)

Clock: TypeAlias = Callable[[], datetime]

_TIME_COLUMNS: Final = frozenset({"next_run_at", "next_retry_at", "waiting_since", "wait_until"})
_NEW_STEP: Final[Row] = {
    **dict.fromkeys(("compensate_data", "result", "next_retry_at", "error")),
    **dict.fromkeys(("await_kind", "waiting_since", "wait_until", "wait_seconds", "await_outcome")),
    "await_result": None,
    "key_generation": 1,
}


def utc_now() -> datetime:
    """The default clock: an aware UTC ``datetime``."""
    return datetime.now(UTC)


def require_aware(name: str, value: datetime) -> datetime:
    """``value`` converted to UTC; ``ValueError`` naming ``name`` when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def require_positive(name: str, value: float) -> None:
    """``ValueError`` naming ``name`` unless ``value`` > 0."""
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


def storable_lookup(*values: str | None) -> bool:
    """Whether every value could be stored: one holding NUL or an unpaired surrogate can
    match no row (and PostgreSQL would refuse the query itself, as if it were down)."""
    return all(value is None or clean_text(value) == value for value in values)


def require_storable_id(saga_id: str) -> None:
    """Raise ``SagaNotFound`` for an id that no stored saga can have."""
    if not storable_lookup(saga_id):
        raise SagaNotFound(f"no saga {saga_id!r}")


# -- writes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """A batch as ``StoreBackend.apply`` takes it."""

    sources: frozenset[str] | None
    changes: Row
    steps: tuple[StepUpdate, ...]
    attempts: tuple[Row, ...]


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


def plan(lease: Lease, batch: WriteBatch, now: datetime) -> Plan:
    """What ``batch`` changes at ``now``: ``updated_at`` bumped, ``completed_at`` /
    ``compensated_at`` set on entering those statuses, the lease given up on ``release``, and
    the statuses each change may come from (``SAGA_TRANSITIONS``, ``STEP_TRANSITIONS``)."""
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
        if change.phase is not None:
            columns["phase"] = change.phase.value
        columns.update(status=change.status.value, updated_at=now)
        table = step_transitions(change.phase)
        step_sources = frozenset(s.value for s in table.sources(change.status))
        steps.append(StepUpdate(change.step_order, step_sources, columns))
    attempts = tuple(attempt_row(lease.saga_id, record) for record in batch.attempts)
    return Plan(sources, changes, tuple(steps), attempts)


async def explain(backend: StoreBackend, lease: Lease, batch: WriteBatch) -> NoReturn:
    """Raise the exception that says why ``batch``, written under ``lease``, matched no row."""
    instance = await backend.select_instance(lease.saga_id)
    if instance is None:
        raise SagaNotFound(f"no saga {lease.saga_id}")
    if instance["lease_version"] != lease.version or instance["owner"] != lease.owner:
        raise LeaseLost(
            f"saga {lease.saga_id}: lease {lease.version} of {lease.owner!r} is stale; "
            f"now lease {instance['lease_version']} of {instance['owner']!r}"
        )
    if batch.saga_status is not None:
        SAGA_TRANSITIONS.check(SagaStatus(instance["status"]), batch.saga_status)
    checks: list[tuple[int, StepChange | None]] = [(c.step_order, c) for c in batch.steps]
    checks += [(a.step_order, None) for a in batch.attempts]
    for step_order, change in checks:
        step = await backend.select_step(lease.saga_id, step_order)
        if step is None:
            raise SagaNotFound(f"saga {lease.saga_id} has no step {step_order}")
        if change is not None:
            step_transitions(change.phase).check(StepStatus(step["status"]), change.status)
    raise StoreError(f"saga {lease.saga_id}: write refused by a concurrent change")


# -- creation -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewSaga:
    """What ``SagaStore.create_instance`` records, besides the steps (see its arguments)."""

    saga_id: str
    business_type: str
    business_id: str | None
    definition_hash: str
    mode: str
    input_data: JsonValue
    owner: str
    lease_seconds: float
    idempotency_key: str | None
    started: Mapping[str, JsonValue] | None
    client_scope: str | None = None
    deadline_at: datetime | None = None


def creation_rows(
    new: NewSaga, steps: Sequence[NewStep], now: datetime, lease_expires: datetime | None
) -> tuple[Row, list[Row], Row | None]:
    """The instance row (``running``, leased by ``new.owner``, version 1), its step rows and
    its ``started`` event (``None`` unless ``new.started``)."""
    running = [n for n, step in enumerate(steps) if step.status is StepStatus.RUNNING]
    instance: Row = {
        "id": new.saga_id,
        "business_type": new.business_type,
        "business_id": new.business_id,
        "status": SagaStatus.RUNNING.value,
        "current_step": running[0] if running else None,
        "input": new.input_data,
        "definition_hash": new.definition_hash,
        "idempotency_key": new.idempotency_key,
        "client_scope": new.client_scope,
        "deadline_at": new.deadline_at,
        "mode": new.mode,
        "owner": new.owner,
        "lease_expires_at": lease_expires,  # None: computed by the database's clock
        "lease_version": 1,
        "created_at": now,
        "updated_at": now,
    }
    step_rows = [
        {
            "saga_id": new.saga_id,
            "step_order": order,
            "step_name": step.name,
            "status": step.status.value,
            "execute_data": step.execute_data,
            "retry_count": step.retry_count,
            "max_retry_count": step.max_retry_count,
            "stage": order if step.stage is None else step.stage,
            "phase": None if step.phase is None else step.phase.value,
            "created_at": now,
            "updated_at": now,
        }
        for order, step in enumerate(steps)
    ]
    event: Row | None = None
    if new.started is not None:
        event = {"saga_id": new.saga_id, "at": now, "actor": new.owner, "action": "started"}
        event["detail"] = dict(new.started)
    return instance, step_rows, event


def created_steps(step_rows: Sequence[Row], step_ids: Sequence[int]) -> tuple[SagaStep, ...]:
    """The steps as ``creation_rows`` wrote them, with the ids the database gave them."""
    return tuple(
        from_row(SagaStep, {**_NEW_STEP, **step, "id": step_id})
        for step, step_id in zip(step_rows, step_ids, strict=True)
    )


# -- reads ----------------------------------------------------------------------------------------


def detail(instance: Row, steps: list[Row], attempts: list[Row], events: list[Row]) -> SagaDetail:
    """The rows of ``StoreBackend.select_detail`` as a ``SagaDetail``."""
    return SagaDetail(
        instance=from_row(SagaInstance, instance),
        steps=tuple(from_row(SagaStep, r) for r in steps),
        attempts=tuple(from_row(StepAttempt, r) for r in attempts),
        events=tuple(from_row(SagaEvent, r) for r in events),
    )
