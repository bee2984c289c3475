"""The backward phase of a saga: undo its steps in reverse order.

``Compensator.undo`` walks the steps that may have taken effect, newest first, and for each one
announces its compensation (status ``compensating`` with the rendered request) before the call,
then records the outcome together with the attempt row in one write. The engine ends the saga
(``compensated`` or ``failed``) with what ``undo`` reports.
"""

from __future__ import annotations

from saga_runner.attempts import AttemptLoop, CallSpec
from saga_runner.caller import Outcome, StepRequest
from saga_runner.definition import StepDefinition
from saga_runner.errors import TemplateError
from saga_runner.records import JsonValue, SagaStep
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
            failure = await self._compensate_step(run, row)
            if failure is None:
                continue
            failures.append(failure)
            if not undo_impossible(run.definition.steps[row.step_order], row):
                break
        return failures

    async def _write(self, run: Run, batch: WriteBatch) -> None:
        run.saga = await self.store.write(run.lease, batch)

    async def _compensate_step(self, run: Run, row: SagaStep) -> str | None:
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
        if request is not None:
            columns["next_retry_at"] = None  # the first attempt's "about to call"
        await self._write(
            run, WriteBatch(steps=(StepChange(order, StepStatus.COMPENSATING, columns),))
        )
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
