"""The backward phase of a saga: undo its steps in reverse order.

``Compensator.undo`` walks the steps that may have taken effect, newest first, and for each one
announces its compensation (status ``compensating`` with the rendered request) before the call,
then records the outcome together with the attempt row in one write. The engine ends the saga
(``compensated`` or ``failed``) with what ``undo`` reports.

A compensation's ``retry.attempts`` bounds its calls across restarts: a run that resumes a step
left ``compensating`` counts the attempts already made (see ``resumed_attempts``) and makes only
the ones left, after re-sending an attempt that was cut off (its outcome is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from saga_runner.attempts import AttemptLoop, CallSpec
from saga_runner.caller import Outcome, StepRequest
from saga_runner.definition import StepDefinition
from saga_runner.errors import TemplateError
from saga_runner.records import JsonValue, SagaStep, StepAttempt
from saga_runner.redact import Redactor
from saga_runner.runs import (
    EngineSettings,
    Run,
    build_request,
    log_run,
    needs_compensation,
    undo_impossible,
)
from saga_runner.states import AttemptKind, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import AttemptRecord, StepChange, WriteBatch


class Compensator:
    """Undoes the steps of one run after the forward phase failed (or an operator aborted)."""

    def __init__(
        self,
        store: SagaStore,
        attempts: AttemptLoop,
        redactor: Redactor,
        settings: EngineSettings,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.redactor = redactor
        self.settings = settings

    async def undo(self, run: Run) -> list[str]:
        """Undo steps in reverse order; return why steps could not be undone (empty: all were).

        A compensation that failed stops the walk (earlier steps stay as they are for an
        operator), unless it can never be built because it needs an answer its step never got
        (see ``undo_impossible``): that one is recorded as failed and the walk goes on, so the
        earlier, known effects are still undone.
        """
        detail = await self.store.get(run.saga.id)
        failures: list[str] = []
        for row in reversed(detail.steps):
            if not needs_compensation(row):
                continue
            failure = await self._compensate_step(run, row, detail.attempts)
            if failure is None:
                continue
            failures.append(failure)
            if not undo_impossible(run.definition.steps[row.step_order], row):
                break
        return failures

    async def _write(self, run: Run, batch: WriteBatch) -> None:
        run.saga = await self.store.write(run.lease, batch)

    async def _compensate_step(
        self, run: Run, row: SagaStep, made: Sequence[StepAttempt]
    ) -> str | None:
        """Undo one step; return why it could not be undone, or None when it was."""
        order = row.step_order
        step_def = run.definition.steps[order]
        compensation = step_def.compensation
        request: StepRequest | None = None
        problem: str | None = None
        if compensation is not None:
            try:
                request = build_request(
                    step_def,
                    AttemptKind.COMPENSATION,
                    run.context(),
                    self.settings.services,
                    row.key_generation,
                )
            except TemplateError as exc:
                problem = str(exc)
        sent = None if request is None else self.redactor.redact_call(request.as_record())
        columns: dict[str, JsonValue] = {"compensate_data": sent}
        first_attempt, cut_off = 1, None
        if request is not None:
            columns["next_retry_at"] = None  # the first attempt's "about to call"
            if row.status is not StepStatus.COMPENSATING:
                columns["error"] = None  # a new round of attempts: none has failed yet
            else:
                first_attempt, cut_off = resumed_attempts(row, made)
                if cut_off is not None:
                    columns["error"] = cut_off.error
        rows = () if cut_off is None else (cut_off,)
        change = StepChange(order, StepStatus.COMPENSATING, columns)
        await self._write(run, WriteBatch(steps=(change,), attempts=rows))
        if compensation is None:
            await self._write(run, WriteBatch(steps=(StepChange(order, StepStatus.COMPENSATED),)))
            return None
        if request is None:
            reason = f"cannot build the compensation: {problem}"
            return await self._compensation_failed(run, order, step_def, reason, {})
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=order,
            step_name=step_def.name,
            kind=AttemptKind.COMPENSATION,
            request=request,
            success=compensation.success_statuses,
            timeout=step_def.timeout_or(self.settings.default_timeout),
            retry=compensation.retry,
            first_attempt=first_attempt,
        )
        result, attempt = await self.attempts.run(run.lease, spec, announced=True)
        # The compensation's answer goes next to its request: ``result`` keeps the action's.
        answered = {**(sent or {}), "response": self.redactor.redact_call(result.as_record())}
        if result.outcome is Outcome.SUCCESS:
            compensated = StepChange(
                order, StepStatus.COMPENSATED, {"compensate_data": answered, "error": None}
            )
            await self._write(run, WriteBatch(steps=(compensated,), attempts=(attempt,)))
            return None
        reason = result.error or f"status {result.status}"
        columns = {"compensate_data": answered}
        return await self._compensation_failed(run, order, step_def, reason, columns, attempt)

    async def _compensation_failed(
        self,
        run: Run,
        order: int,
        step_def: StepDefinition,
        reason: str,
        columns: dict[str, JsonValue],
        attempt: AttemptRecord | None = None,
    ) -> str:
        message = f"compensation of step {step_def.name} failed: {reason}"
        change = StepChange(order, StepStatus.COMPENSATION_FAILED, {**columns, "error": message})
        attempts = () if attempt is None else (attempt,)
        await self._write(run, WriteBatch(steps=(change,), attempts=attempts))
        log_run(run, "compensation failed", step=step_def.name, reason=reason)
        return message


def resumed_attempts(
    row: SagaStep, made: Sequence[StepAttempt]
) -> tuple[int, AttemptRecord | None]:
    """Where an interrupted compensation (step left ``compensating``) goes on.

    A round of attempts starts by clearing the step's ``error``; every failed attempt is then
    recorded as a row together with the error and when the next attempt is due
    (``next_retry_at``), and ``next_retry_at`` is cleared again when that attempt is announced.
    So the last compensation row of the step (none while ``error`` is empty) is the last attempt
    with a known end, and the one after it was cut off mid-call unless ``next_retry_at`` is set
    (the run stopped during the backoff).

    Returns:
        the number of the next attempt, and the row to record for an attempt that was cut off
        (written with the resumed run's announcement, so a second crash counts it too).
    """
    numbers = [
        a.attempt
        for a in made
        if a.step_order == row.step_order and a.kind is AttemptKind.COMPENSATION
    ]
    last = numbers[-1] if numbers and row.error is not None else 0
    if row.next_retry_at is not None:
        return last + 1, None
    lost = last + 1
    error = f"attempt {lost} got no answer: the run stopped during the call"
    cut_off = AttemptRecord(
        row.step_order, AttemptKind.COMPENSATION, lost, datetime.now(UTC), 0.0, error=error
    )
    return lost + 1, cut_off
