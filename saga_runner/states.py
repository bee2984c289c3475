"""Saga and step statuses and the transitions allowed between them.

Every status change the store writes is checked against these tables, so an engine bug or a
confused operator command is refused instead of corrupting a record. Self-transitions
(``running -> running``) exist where a write keeps the status but changes other fields: a new
``current_step``, a retry count, a resumed re-send of a step whose outcome was unknown.

Allowed moves (each status also lists itself where a same-status write makes sense)::

    saga  running       -> running, compensating, completed, failed
          compensating  -> compensating, compensated, failed
          failed        -> compensating, running              (operator retry; running: a TCC
                                                               saga's confirms)
    step  pending       -> running, failed                     (failed: request could not be built)
          running       -> running, waiting, succeeded, failed, compensating
          waiting       -> succeeded, failed, compensating     (an awaiting step's outcome, or
                                                               an abort while it waits)
          succeeded     -> compensating, compensated
          failed        -> compensating, compensated
          compensating  -> compensating, compensated, compensation_failed
          compensation_failed -> compensating                 (operator retry)

A step that ``failed`` after an unknown outcome (timeout, replica died mid-call) may still have
taken effect, so it may move to ``compensating``; a step with nothing to undo may go straight
from ``succeeded`` or ``failed`` to ``compensated``.

A TCC step's confirm has a table of its own (``CONFIRM_TRANSITIONS``, used for the changes that
set the step's ``phase`` to ``confirm``): the step whose try succeeded is ``running`` again while
its confirm is made, ``succeeded`` once confirmed, ``failed`` when its confirm ran out of
attempts, and ``running`` again when an operator retries it::

    confirm  succeeded -> running;  running -> running, succeeded, failed;  failed -> running
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Generic, TypeVar

from saga_runner.errors import IllegalTransition


class SagaStatus(StrEnum):
    """Where a saga instance is in its lifecycle (``saga_instances.status``)."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"


class StepStatus(StrEnum):
    """Where one step of a saga is (``saga_steps.status``)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class AttemptKind(StrEnum):
    """Which call of a step an attempt made: a saga step's action or compensation, or a TCC
    step's try, confirm or cancel (also a TCC step's ``phase``), or a poll of a step that awaits
    its outcome by polling."""

    ACTION = "action"
    COMPENSATION = "compensation"
    TRY = "try"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    POLL = "poll"

    @property
    def forward(self) -> bool:
        """Whether this is a step's forward call (``action`` or ``try``)."""
        return self in (AttemptKind.ACTION, AttemptKind.TRY)

    @property
    def undoes(self) -> bool:
        """Whether this call undoes a forward call (``compensation`` or ``cancel``)."""
        return self in (AttemptKind.COMPENSATION, AttemptKind.CANCEL)


S = TypeVar("S", SagaStatus, StepStatus)


@dataclass(frozen=True)
class TransitionTable(Generic[S]):
    """An allowed-transition table for one status enum.

    Attributes:
        kind: ``"saga"`` or ``"step"``, used in error messages.
        allowed: for each status, the statuses it may move to (itself included when allowed).
    """

    kind: str
    allowed: Mapping[S, frozenset[S]]

    def can(self, old: S, new: S) -> bool:
        """Whether ``old -> new`` is allowed."""
        return new in self.allowed[old]

    def check(self, old: S, new: S) -> None:
        """Raise ``IllegalTransition`` unless ``old -> new`` is allowed.

        Args:
            old: the current status.
            new: the status about to be written.
        """
        if not self.can(old, new):
            raise IllegalTransition(self.kind, str(old), str(new))

    def sources(self, new: S) -> frozenset[S]:
        """Every status from which ``new`` may be entered."""
        return frozenset(old for old, targets in self.allowed.items() if new in targets)


_Saga = SagaStatus
_Step = StepStatus

SAGA_TRANSITIONS: Final = TransitionTable[SagaStatus](
    "saga",
    MappingProxyType(
        {
            _Saga.RUNNING: frozenset(
                {_Saga.RUNNING, _Saga.COMPENSATING, _Saga.COMPLETED, _Saga.FAILED}
            ),
            _Saga.COMPENSATING: frozenset({_Saga.COMPENSATING, _Saga.COMPENSATED, _Saga.FAILED}),
            _Saga.FAILED: frozenset({_Saga.COMPENSATING, _Saga.RUNNING}),
            _Saga.COMPLETED: frozenset(),
            _Saga.COMPENSATED: frozenset(),
        }
    ),
)

STEP_TRANSITIONS: Final = TransitionTable[StepStatus](
    "step",
    MappingProxyType(
        {
            _Step.PENDING: frozenset({_Step.RUNNING, _Step.FAILED}),
            _Step.RUNNING: frozenset(
                {_Step.RUNNING, _Step.WAITING, _Step.SUCCEEDED, _Step.FAILED, _Step.COMPENSATING}
            ),
            _Step.WAITING: frozenset({_Step.SUCCEEDED, _Step.FAILED, _Step.COMPENSATING}),
            _Step.SUCCEEDED: frozenset({_Step.COMPENSATING, _Step.COMPENSATED}),
            _Step.FAILED: frozenset({_Step.COMPENSATING, _Step.COMPENSATED}),
            _Step.COMPENSATING: frozenset(
                {_Step.COMPENSATING, _Step.COMPENSATED, _Step.COMPENSATION_FAILED}
            ),
            _Step.COMPENSATION_FAILED: frozenset({_Step.COMPENSATING}),
            _Step.COMPENSATED: frozenset(),
        }
    ),
)

CONFIRM_TRANSITIONS: Final = TransitionTable[StepStatus](
    "confirm",
    MappingProxyType(
        {
            **{status: frozenset[StepStatus]() for status in StepStatus},
            _Step.SUCCEEDED: frozenset({_Step.RUNNING}),
            _Step.RUNNING: frozenset({_Step.RUNNING, _Step.SUCCEEDED, _Step.FAILED}),
            _Step.FAILED: frozenset({_Step.RUNNING}),
        }
    ),
)


def step_transitions(phase: AttemptKind | None) -> TransitionTable[StepStatus]:
    """The table a step change of ``phase`` is checked against (``CONFIRM_TRANSITIONS`` for
    a TCC confirm, else ``STEP_TRANSITIONS``)."""
    return CONFIRM_TRANSITIONS if phase is AttemptKind.CONFIRM else STEP_TRANSITIONS


ACTIVE_SAGA_STATUSES: Final = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
"""Statuses the recovery loop resumes: the saga still has work to do without an operator."""

FINISHED_SAGA_STATUSES: Final = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})
"""Terminal statuses; retention deletes these. ``failed`` waits for an operator and is kept."""


def check_transition(old: SagaStatus | StepStatus, new: SagaStatus | StepStatus) -> None:
    """Raise ``IllegalTransition`` unless ``old -> new`` is allowed for its kind of status.

    Args:
        old: the current saga or step status.
        new: the status about to be written (same enum as ``old``).
    """
    if isinstance(old, SagaStatus) and isinstance(new, SagaStatus):
        SAGA_TRANSITIONS.check(old, new)
    elif isinstance(old, StepStatus) and isinstance(new, StepStatus):
        STEP_TRANSITIONS.check(old, new)
    else:
        raise TypeError(f"cannot compare a {type(old).__name__} with a {type(new).__name__}")
