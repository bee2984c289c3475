"""JSON views of saga records for operators: the admin API, the dashboard and ``sagas --json``.

Stored records are already redacted when the engine writes them; every view redacts again on the
way out (defence in depth), hiding the value of any key, at any depth, that names a redacted
header or body field (``Authorization``, cookies, ``redact.headers``, ``redact.fields``).
Timestamps are ISO-8601 UTC strings.

A saga's detail shows its shape: ``stages`` lists the steps of each item of the saga's ``steps``
(a parallel group's members side by side), and a TCC saga (``kind: tcc``) says which phase it is
in (``phase``: ``try``, ``confirm`` or ``cancel``) and, per step, how each of its three calls went
(``phases``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from saga_runner.catalog import SagaCatalog
from saga_runner.records import (
    JsonValue,
    SagaDetail,
    SagaEvent,
    SagaInstance,
    SagaPage,
    SagaStep,
    StepAttempt,
)
from saga_runner.redact import REDACTED, Redactor
from saga_runner.seal import SEALED
from saga_runner.states import AttemptKind, SagaStatus

StepNames = Callable[[SagaInstance], Sequence[str]]


class OutputRedactor:
    """Hides every value whose key names a redacted header or body field, at any depth."""

    def __init__(self, redactor: Redactor) -> None:
        self.keys = redactor.headers | redactor.fields

    def __call__(self, value: JsonValue) -> JsonValue:
        """A redacted copy of a JSON value."""
        if isinstance(value, Mapping):
            return {
                k: REDACTED if str(k).lower() in self.keys else self(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def stamp(value: datetime | None) -> str | None:
    """An aware datetime as ISO-8601 text (``None`` stays ``None``)."""
    return None if value is None else value.isoformat()


def catalog_step_names(catalog: SagaCatalog) -> StepNames:
    """The step names of a saga's definition, looked up in ``catalog`` (none: not loaded)."""

    def names(saga: SagaInstance) -> Sequence[str]:
        definition = catalog.by_hash.get(saga.definition_hash)
        return () if definition is None else [step.name for step in definition.all_steps]

    return names


def step_name(names: Sequence[str], order: int | None) -> str | None:
    """The name of step ``order`` (None when there is no such step or its name is unknown)."""
    return names[order] if order is not None and 0 <= order < len(names) else None


def saga_summary(saga: SagaInstance, names: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of an instance a list shows (no input, no stored response).

    ``failed_step`` is the failed step's name (``names``: the saga's step names, in order), and
    ``failed_step_order`` its position.
    """
    return {
        "id": saga.id,
        "name": saga.name,
        "business_id": saga.business_id,
        "status": saga.status.value,
        "mode": saga.mode,
        "current_step": saga.current_step,
        "failed_step": step_name(names, saga.failed_step),
        "failed_step_order": saga.failed_step,
        "failure_reason": saga.failure_reason,
        "created_at": stamp(saga.created_at),
        "updated_at": stamp(saga.updated_at),
        "completed_at": stamp(saga.completed_at),
        "compensated_at": stamp(saga.compensated_at),
    }


def saga_view(
    saga: SagaInstance, redact: OutputRedactor, names: Sequence[str] = ()
) -> dict[str, Any]:
    """Every field of an instance, its input and stored response redacted."""
    return {
        **saga_summary(saga, names),
        "definition_hash": saga.definition_hash,
        "idempotency_key_hash": saga.idempotency_key,
        "input": redact(saga.input),
        "response": redact(saga.response),
        "owner": saga.owner,
        "lease_expires_at": stamp(saga.lease_expires_at),
        "lease_version": saga.lease_version,
        "next_run_at": stamp(saga.next_run_at),
        "deadline_at": stamp(saga.deadline_at),
    }


def attempt_view(attempt: StepAttempt) -> dict[str, Any]:
    """One HTTP call of a step: which, when, how long, and what came back."""
    return {
        "kind": attempt.kind.value,
        "attempt": attempt.attempt,
        "started_at": stamp(attempt.started_at),
        "duration_ms": round(attempt.duration_ms, 3),
        "status_code": attempt.status_code,
        "error": attempt.error,
    }


def step_view(
    step: SagaStep, attempts: list[StepAttempt], redact: OutputRedactor
) -> dict[str, Any]:
    """One step with the request it sent, its last answer and every attempt (oldest first).

    ``stage`` is the position of its item in the saga's ``steps`` (the members of a parallel
    group share it); ``phase`` a TCC step's ``try``, ``confirm`` or ``cancel`` (None in a saga),
    ``phases`` how each of its calls went (see ``phases_view``), and ``await`` how a step that
    awaits its outcome waits (``await_view``).
    """
    return {
        "order": step.step_order,
        "name": step.step_name,
        "stage": step.stage,
        "phase": None if step.phase is None else step.phase.value,
        "status": step.status.value,
        "retry_count": step.retry_count,
        "max_retry_count": step.max_retry_count,
        "key_generation": step.key_generation,
        "next_retry_at": stamp(step.next_retry_at),
        "error": step.error,
        "execute_data": redact(step.execute_data),
        "compensate_data": redact(step.compensate_data),
        "result": redact(step.result),
        "created_at": stamp(step.created_at),
        "updated_at": stamp(step.updated_at),
        "await": await_view(step, redact),
        "attempts": [attempt_view(a) for a in attempts],
        "phases": phases_view(step, attempts),
    }


def await_view(step: SagaStep, redact: OutputRedactor) -> dict[str, Any] | None:
    """How a step that awaits its outcome waits or waited: which await, since when, until
    when, and what ended it (None for a step that does not await; never its tokens).

    An outcome recorded before the step ever waited (its service called back while the action
    call was in flight, and the action's answer then failed the step) came by callback: only a
    callback records one then."""
    if step.await_kind is None and step.await_outcome is None:
        return None
    return {
        "kind": step.await_kind or "callback",
        "waiting_since": stamp(step.waiting_since),
        "wait_until": stamp(step.wait_until),
        "timeout_seconds": step.wait_seconds,
        "outcome": step.await_outcome,
        "result": redact(step.await_result),
    }


def event_view(event: SagaEvent, redact: OutputRedactor) -> dict[str, Any]:
    """One event: who did what, when."""
    return {
        "at": stamp(event.at),
        "actor": event.actor,
        "action": event.action,
        "detail": redact(_unsealed(event.detail)),
    }


def _unsealed(detail: JsonValue) -> JsonValue:
    """An event's detail without the sealed redacted values (never shown, even encrypted)."""
    if isinstance(detail, Mapping) and SEALED in detail:
        return {k: v for k, v in detail.items() if k != SEALED}
    return detail


TCC_CALLS = (AttemptKind.TRY, AttemptKind.CONFIRM, AttemptKind.CANCEL)
CANCELLING = frozenset({SagaStatus.COMPENSATING, SagaStatus.COMPENSATED})


def saga_phase(saga: SagaInstance, steps: Sequence[SagaStep]) -> str | None:
    """The phase a TCC saga is in (None for a saga): ``confirm`` once it decided to confirm,
    ``cancel`` once it decided to cancel, else ``try``."""
    phases = {step.phase for step in steps}
    if phases == {None}:
        return None
    if AttemptKind.CONFIRM in phases:
        return AttemptKind.CONFIRM.value
    if AttemptKind.CANCEL in phases or saga.status in CANCELLING:
        return AttemptKind.CANCEL.value
    return AttemptKind.TRY.value


def phases_view(step: SagaStep, attempts: Sequence[StepAttempt]) -> dict[str, Any] | None:
    """How each call of a TCC step went (None for a saga step).

    ``status`` is the step's status for the call it is at (its ``phase``), ``succeeded`` for a
    try once the step is confirming (confirms start only after every try succeeded), and None
    otherwise; ``calls`` counts the attempts made, ``last_status_code`` and ``last_error`` are
    the last one's.
    """
    if step.phase is None:
        return None
    view: dict[str, Any] = {}
    for kind in TCC_CALLS:
        made = [a for a in attempts if a.kind is kind]
        status: str | None = None
        if step.phase is kind:
            status = step.status.value
        elif kind is AttemptKind.TRY and step.phase is AttemptKind.CONFIRM:
            status = "succeeded"
        view[kind.value] = {
            "status": status,
            "calls": len(made),
            "last_status_code": made[-1].status_code if made else None,
            "last_error": made[-1].error if made else None,
        }
    return view


def stages_view(steps: Sequence[SagaStep]) -> list[dict[str, Any]]:
    """The saga's items in order: each ``stage`` with the names of its steps (several: a
    parallel group, whose members run side by side)."""
    stages: dict[int, list[str]] = {}
    for step in sorted(steps, key=lambda s: (s.stage, s.step_order)):
        stages.setdefault(step.stage, []).append(step.step_name)
    return [
        {"stage": stage, "parallel": len(names) > 1, "steps": names}
        for stage, names in stages.items()
    ]


def detail_view(detail: SagaDetail, redact: OutputRedactor) -> dict[str, Any]:
    """An instance with its shape (``kind``, ``phase``, ``stages``), its step timeline
    (attempts grouped per step) and its events."""
    by_step: dict[int, list[StepAttempt]] = {}
    for attempt in sorted(detail.attempts, key=lambda a: (a.started_at, a.id)):
        by_step.setdefault(attempt.step_order, []).append(attempt)
    phase = saga_phase(detail.instance, detail.steps)
    return {
        **saga_view(detail.instance, redact, [s.step_name for s in detail.steps]),
        "kind": "saga" if phase is None else "tcc",
        "phase": phase,
        "stages": stages_view(detail.steps),
        "steps": [step_view(s, by_step.get(s.step_order, []), redact) for s in detail.steps],
        "events": [event_view(e, redact) for e in detail.events],
    }


def page_view(page: SagaPage, names: StepNames) -> dict[str, Any]:
    """One page of the newest-first list and the cursor of the next (``None`` on the last)."""
    return {
        "items": [saga_summary(s, names(s)) for s in page.items],
        "next_cursor": None if page.next_cursor is None else page.next_cursor.encode(),
    }
