"""What the saga store returns and accepts: frozen records and small value objects.

Both store backends return exactly these types: statuses as ``StrEnum`` members, timestamps as
timezone-aware UTC ``datetime`` objects, JSON columns as plain Python values. A ``Lease`` is the
fencing token a replica presents on every write.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from saga_runner.states import AttemptKind, SagaStatus, StepStatus

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

JsonValue: TypeAlias = Any
"""A value that round-trips through JSON (dict, list, str, int, float, bool or None)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that ``owner`` holds a saga: the fencing token every state-changing write carries.

    Attributes:
        saga_id: the saga instance this lease is on.
        owner: the replica (or operator) that claimed it.
        version: ``saga_instances.lease_version`` at claim time; incremented by every claim, so
            a write carrying an older version is refused with ``LeaseLost``.
    """

    saga_id: str
    owner: str
    version: int


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step to create together with its saga instance (``pending`` unless said otherwise).

    Attributes:
        name: the step name from the definition.
        max_retry_count: how many attempts its action may make (shown to operators).
        status: ``running`` announces the step's first call in the instance's first write.
        execute_data: the rendered request of that call.
        retry_count: attempts made (1 once the first call is announced).
        stage: the position of its item in the saga's ``steps`` (members of a parallel group
            share it); None: its own ``step_order``.
        phase: a TCC step's phase (``try`` until its confirm or cancel); None in a saga.
    """

    name: str
    max_retry_count: int = 0
    status: StepStatus = StepStatus.PENDING
    execute_data: JsonValue = None
    retry_count: int = 0
    stage: int | None = None
    phase: AttemptKind | None = None


@dataclass(frozen=True, slots=True)
class SagaInstance:
    """One row of ``saga_instances``.

    ``owner``, ``lease_expires_at`` and ``lease_version`` describe whoever holds the saga now;
    only a ``Lease`` returned by a claim entitles the caller to write. ``client_scope`` is what
    the trigger's caller was scoped as (an opaque keyed hash; None: unscoped).
    """

    id: str
    business_type: str
    business_id: str | None
    status: SagaStatus
    current_step: int | None
    input: JsonValue
    definition_hash: str
    idempotency_key: str | None
    mode: str
    failure_reason: str | None
    failed_step: int | None
    response: JsonValue
    owner: str | None
    lease_expires_at: datetime | None
    lease_version: int
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    compensated_at: datetime | None
    client_scope: str | None
    deadline_at: datetime | None = None

    @property
    def name(self) -> str:
        """The saga definition's name (stored as ``business_type``)."""
        return self.business_type


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One row of ``saga_steps``: the state of one step of one instance.

    ``key_generation`` is the generation of the compensation's ``Idempotency-Key`` (1: the
    plain ``<saga>:<step>:compensation``); an operator retry bumps it after a replayed failure.
    ``stage`` is the position of the step's item in the saga's ``steps`` (the members of a
    parallel group share it); ``phase`` a TCC step's ``try``, ``confirm`` or ``cancel`` (None in
    a saga). A step that awaits its outcome (``await_kind``, e.g. ``callback``) is ``waiting``
    from ``waiting_since`` until ``wait_until`` (a heartbeat moves it ``wait_seconds`` on);
    ``await_outcome`` is what ended the wait (``success``, ``failure``, ``timeout``,
    ``deadline``) and ``await_result`` the result a callback reported.
    """

    id: int
    saga_id: str
    step_order: int
    step_name: str
    status: StepStatus
    execute_data: JsonValue
    compensate_data: JsonValue
    result: JsonValue
    retry_count: int
    max_retry_count: int
    next_retry_at: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    key_generation: int
    stage: int
    phase: AttemptKind | None
    await_kind: str | None = None
    waiting_since: datetime | None = None
    wait_until: datetime | None = None
    wait_seconds: float | None = None
    await_outcome: str | None = None
    await_result: JsonValue = None


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """One row of ``saga_step_attempts``: a single HTTP call made for a step."""

    id: int
    saga_id: str
    step_order: int
    kind: AttemptKind
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """One row of ``saga_events``: an operator action or notable event (who, when, what)."""

    id: int
    saga_id: str
    at: datetime
    actor: str
    action: str
    detail: JsonValue


@dataclass(frozen=True, slots=True)
class SagaDetail:
    """An instance with its steps (by ``step_order``), attempts and events (oldest first)."""

    instance: SagaInstance
    steps: tuple[SagaStep, ...]
    attempts: tuple[StepAttempt, ...]
    events: tuple[SagaEvent, ...]


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A snapshot of one saga definition version, which instances are pinned to by hash."""

    hash: str
    name: str
    body: JsonValue
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A saga claimed by a replica: the instance as claimed and the lease to write with."""

    saga: SagaInstance
    lease: Lease


@dataclass(frozen=True, slots=True)
class CreateResult:
    """The outcome of ``create_instance``.

    Attributes:
        saga: the new instance, or the existing one for a duplicate idempotency key.
        lease: the caller's lease on a new instance; ``None`` for a duplicate (someone else's).
        steps: the new instance's steps as written (empty for a duplicate).
    """

    saga: SagaInstance
    lease: Lease | None
    steps: tuple[SagaStep, ...] = ()

    @property
    def created(self) -> bool:
        """False when an instance with the same idempotency key already existed."""
        return self.lease is not None


@dataclass(frozen=True, slots=True)
class PageCursor:
    """A position in the newest-first saga list: the last item of the previous page."""

    created_at: datetime
    saga_id: str

    def encode(self) -> str:
        """An opaque, URL-safe string for ``?before=``."""
        raw = f"{self.created_at.isoformat()}|{self.saga_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> PageCursor:
        """Parse what ``encode`` produced; raise ``ValueError`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            stamp, saga_id = raw.split("|", 1)
            created_at = datetime.fromisoformat(stamp)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"invalid page cursor {text!r}") from exc
        if created_at.tzinfo is None:
            raise ValueError(f"invalid page cursor {text!r}")
        return cls(created_at.astimezone(UTC), saga_id)


@dataclass(frozen=True, slots=True)
class SagaPage:
    """One page of ``list_sagas``; ``next_cursor`` is ``None`` on the last page."""

    items: tuple[SagaInstance, ...]
    next_cursor: PageCursor | None


R = TypeVar("R", bound="DataclassInstance")

_ENUM_FIELDS: Final[Mapping[str, type[Enum]]] = {
    "SagaInstance.status": SagaStatus,
    "SagaStep.status": StepStatus,
    "SagaStep.phase": AttemptKind,
    "StepAttempt.kind": AttemptKind,
}


def from_row(cls: type[R], row: Mapping[str, Any]) -> R:
    """Build a record from a decoded row (datetimes and JSON already converted by the backend).

    Args:
        cls: one of the record dataclasses above.
        row: column name -> value; extra columns are ignored.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = row[field.name]
        enum = _ENUM_FIELDS.get(f"{cls.__name__}.{field.name}")
        values[field.name] = enum(value) if enum is not None and value is not None else value
    return cls(**values)
