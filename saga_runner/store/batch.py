"""What one fenced ``SagaStore.write`` changes at once: the instance, steps and attempt rows.

The engine records a step's outcome together with the announcement of the next step (or the
saga's end and the release of its lease) as one ``WriteBatch``: one transaction, one commit,
all or nothing under the lease. A batch is the only way to change a saga's state: a single step
change, attempt row or status change is a batch of one. Each part is checked against the status
transitions (``SAGA_TRANSITIONS``, ``STEP_TRANSITIONS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from saga_runner.records import JsonValue
from saga_runner.states import AttemptKind, SagaStatus, StepStatus

SAGA_COLUMNS: Final = frozenset(
    {"current_step", "failure_reason", "failed_step", "response", "next_run_at"}
)
"""The ``saga_instances`` columns a batch may set besides ``status`` and the lease."""

STEP_COLUMNS: Final = frozenset(
    {
        "execute_data",
        "compensate_data",
        "result",
        "retry_count",
        "max_retry_count",
        "next_retry_at",
        "error",
        "key_generation",
        "await_kind",
        "waiting_since",
        "wait_until",
        "wait_seconds",
        "await_outcome",
        "await_result",
    }
)
"""The ``saga_steps`` columns a batch may set besides ``status``."""


@dataclass(frozen=True, slots=True)
class StepChange:
    """Move step ``step_order`` to ``status`` and set ``columns`` (a subset of ``STEP_COLUMNS``).

    ``phase`` (a TCC step's ``try``, ``confirm`` or ``cancel``) is written to the step's
    ``phase`` column, and a ``confirm`` change is checked against ``CONFIRM_TRANSITIONS``.
    """

    step_order: int
    status: StepStatus
    columns: Mapping[str, JsonValue] = field(default_factory=dict)
    phase: AttemptKind | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP call made for a step, to be stored as a ``saga_step_attempts`` row."""

    step_order: int
    kind: AttemptKind
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Changes written together by ``SagaStore.write``.

    Attributes:
        steps: step changes, at most one per step.
        attempts: attempt rows to insert (rows of one batch get their ids in no set order;
            the engine writes at most one per step in a batch).
        saga_status: the instance's new status (``None``: keep it).
        saga_columns: other instance columns (a subset of ``SAGA_COLUMNS``).
        release: give the lease up in the same write (``owner`` and ``lease_expires_at``
            cleared; ``next_run_at`` cleared unless ``saga_columns`` sets it).
    """

    steps: tuple[StepChange, ...] = ()
    attempts: tuple[AttemptRecord, ...] = ()
    saga_status: SagaStatus | None = None
    saga_columns: Mapping[str, JsonValue] = field(default_factory=dict)
    release: bool = False

    def then(self, later: WriteBatch) -> WriteBatch:
        """This batch followed by ``later`` (whose saga status and columns win)."""
        return WriteBatch(
            steps=self.steps + later.steps,
            attempts=self.attempts + later.attempts,
            saga_status=later.saga_status or self.saga_status,
            saga_columns={**self.saga_columns, **later.saga_columns},
            release=self.release or later.release,
        )


NOTHING: Final = WriteBatch()
"""An empty batch (``write`` of it only bumps ``updated_at`` under the lease)."""
