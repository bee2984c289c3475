"""The calls that settle a step after its forward phase: compensations, TCC cancels and confirms.

``Compensator.undo`` walks the stages of a saga newest first and undoes every step that may have
taken effect: the members of a parallel group concurrently, stages one after another. Each
stage's calls are announced together (status ``compensating`` with the rendered request, one
write) before any of them is made, and each outcome is recorded with its attempt row in one
write. In a TCC saga the undoing call is the step's ``cancel``, sent for every step whose try was
sent (see ``needs_compensation``). ``Compensator.confirm`` makes every confirm of a TCC saga at
once; its announcement (every step's ``phase`` set to ``confirm``) is the decision to confirm,
written before any confirm is sent, so a resumed run never cancels after it. The engine ends the
saga (``completed``, ``compensated`` or ``failed``) with what these report.

A call's ``retry.attempts`` bounds its calls across restarts: a run that resumes a step left
mid-call counts the attempts already made (see ``resumed_attempts``) and makes only the ones
left, after re-sending an attempt that was cut off (its outcome is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from saga_runner.attempts import CallSpec, RunPhase
from saga_runner.caller import Outcome, StepRequest
from saga_runner.definition import StepDefinition
from saga_runner.definition_calls import ConfirmDefinition
from saga_runner.definition_publish import PublishCompensation
from saga_runner.errors import TemplateError
from saga_runner.publishing import broker_down_attempts
from saga_runner.records import JsonValue, SagaStep, StepAttempt
from saga_runner.runs import (
    Run,
    build_request,
    log_run,
    needs_compensation,
    together,
    undo_impossible,
)
from saga_runner.states import AttemptKind, StepStatus
from saga_runner.store.batch import NOTHING, AttemptRecord, StepChange, WriteBatch


@dataclass(frozen=True)
class _Settle:
    """One step's settling call, rendered and announced (or why it cannot be made)."""

    row: SagaStep
    step_def: StepDefinition
    kind: AttemptKind
    call: ConfirmDefinition | PublishCompensation | None
    request: StepRequest | None
    problem: str | None
    sent: JsonValue
    first_attempt: int
    announce: WriteBatch
    free_before: int = 0
    """Attempts of a resumed call that found the broker down before the crash."""

    @property
    def order(self) -> int:
        return self.row.step_order

    @property
    def done(self) -> StepStatus:
        return StepStatus.COMPENSATED if self.kind.undoes else StepStatus.SUCCEEDED

    @property
    def broken(self) -> StepStatus:
        return StepStatus.COMPENSATION_FAILED if self.kind.undoes else StepStatus.FAILED

    @property
    def phase(self) -> AttemptKind | None:
        return None if self.kind is AttemptKind.COMPENSATION else self.kind


class Compensator(RunPhase):
    """Undoes (or, in a TCC saga, confirms) the steps of one run after its forward phase."""

    async def undo(self, run: Run) -> list[str]:
        """Undo stages in reverse order; return why steps could not be undone (empty: all were).

        A compensation that failed stops the walk after its stage (earlier stages stay as they
        are for an operator), unless it can never be built because it needs an answer its step
        never got (see ``undo_impossible``): that one is recorded as failed and the walk goes
        on, so the earlier, known effects are still undone.
        """
        detail = await self.store.get(run.saga.id)
        kind = run.definition.undo_kind
        failures: list[str] = []
        for stage in reversed(run.definition.stages):
            rows = [
                detail.steps[order]
                for order in stage.orders
                if needs_compensation(detail.steps[order], kind)
            ]
            if not rows:
                continue
            settles = [self._prepare(run, row, detail.attempts, kind) for row in rows]
            results = await self._settle_all(run, settles)
            stuck = [
                settle
                for settle, failure in zip(settles, results, strict=True)
                if failure is not None
            ]
            failures += [failure for failure in results if failure is not None]
            if any(not undo_impossible(s.step_def, s.row, kind) for s in stuck):
                break
        return failures

    async def confirm(self, run: Run, done: WriteBatch) -> list[str]:
        """Confirm every TCC step not confirmed yet, all at once, after writing ``done`` (the
        last tries' outcomes); return why confirms failed (empty: none)."""
        if done != NOTHING:
            await run.write(self.store, done)
        detail = await self.store.get(run.saga.id)
        rows = [
            row
            for row in detail.steps
            if not (row.phase is AttemptKind.CONFIRM and row.status is StepStatus.SUCCEEDED)
        ]
        settles = [self._prepare(run, row, detail.attempts, AttemptKind.CONFIRM) for row in rows]
        results = await self._settle_all(run, settles)
        return [failure for failure in results if failure is not None]

    async def _settle_all(self, run: Run, settles: Sequence[_Settle]) -> list[str | None]:
        """Announce every call in one write, then make them concurrently."""
        if not settles:
            return []
        batch = NOTHING
        for settle in settles:
            batch = batch.then(settle.announce)
        await run.write(self.store, batch)
        return await together([self._call(run, settle) for settle in settles])

    def _prepare(
        self, run: Run, row: SagaStep, made: Sequence[StepAttempt], kind: AttemptKind
    ) -> _Settle:
        """Render the call ``kind`` of one step and the write that announces it."""
        step_def = run.definition.all_steps[row.step_order]
        call = step_def.settling_call(kind)
        request: StepRequest | None = None
        problem: str | None = None
        if call is not None:
            generation = row.key_generation if kind.undoes else 1
            try:
                request = build_request(
                    step_def, kind, run.context(), self.settings.services, generation
                )
            except TemplateError as exc:
                problem = str(exc)
        sent = None if request is None else self.redactor.redact_call(request.as_record())
        columns: dict[str, JsonValue] = {"compensate_data": sent}
        first_attempt, cut_off, free = 1, None, 0
        calling = StepStatus.COMPENSATING if kind.undoes else StepStatus.RUNNING
        resumed = row.status is calling and (kind.undoes or row.phase is kind)
        if request is not None:
            columns["next_retry_at"] = None  # the first attempt's "about to call"
            if not resumed:
                columns["error"] = None  # a new round of attempts: none has failed yet
            else:
                first_attempt, cut_off = resumed_attempts(row, made, kind)
                free = broker_down_attempts(made, row.step_order, kind, first_attempt)
                if cut_off is not None:
                    columns["error"] = cut_off.error
        phase = None if kind is AttemptKind.COMPENSATION else kind
        announce = WriteBatch(
            steps=(StepChange(row.step_order, calling, columns, phase),),
            attempts=() if cut_off is None else (cut_off,),
        )
        return _Settle(
            row, step_def, kind, call, request, problem, sent, first_attempt, announce, free
        )

    async def _call(self, run: Run, settle: _Settle) -> str | None:
        """Make one announced call; return why it failed, or None when it succeeded."""
        order = settle.order
        if settle.call is None:
            change = StepChange(order, settle.done, {}, settle.phase)
            await run.write(self.store, WriteBatch(steps=(change,)))
            return None
        if settle.request is None:
            reason = f"cannot build the {settle.kind.value}: {settle.problem}"
            return await self._failed(run, settle, reason, {})
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=order,
            step_name=settle.step_def.name,
            kind=settle.kind,
            request=settle.request,
            success=settle.call.success_statuses,
            timeout=settle.step_def.timeout_or(self.settings.default_timeout),
            retry=settle.call.retry,
            first_attempt=settle.first_attempt,
            free_before=settle.free_before,
        )
        result, attempt = await self.attempts.run(run, spec, announced=True)
        # The call's answer goes next to its request: ``result`` keeps the forward call's.
        answer = {**(settle.sent or {}), "response": self.redactor.redact_call(result.as_record())}
        attempts = () if attempt is None else (attempt,)
        if result.outcome is Outcome.SUCCESS:
            change = StepChange(
                order, settle.done, {"compensate_data": answer, "error": None}, settle.phase
            )
            await run.write(self.store, WriteBatch(steps=(change,), attempts=attempts))
            return None
        reason = result.error or f"status {result.status}"
        return await self._failed(run, settle, reason, {"compensate_data": answer}, attempts)

    async def _failed(
        self,
        run: Run,
        settle: _Settle,
        reason: str,
        columns: dict[str, JsonValue],
        attempts: tuple[AttemptRecord, ...] = (),
    ) -> str:
        name = settle.step_def.name
        message = f"{settle.kind.value} of step {name} failed: {reason}"
        change = StepChange(
            settle.order,
            settle.broken,
            {**columns, "error": message, "next_retry_at": None},
            settle.phase,
        )
        await run.write(self.store, WriteBatch(steps=(change,), attempts=attempts))
        log_run(run, f"{settle.kind.value} failed", step=name, reason=reason)
        return message


def resumed_attempts(
    row: SagaStep, made: Sequence[StepAttempt], kind: AttemptKind = AttemptKind.COMPENSATION
) -> tuple[int, AttemptRecord | None]:
    """Where an interrupted call ``kind`` (a compensation, cancel or confirm left mid-way) goes on.

    A round of attempts starts by clearing the step's ``error``; every failed attempt is then
    recorded as a row together with the error and when the next attempt is due
    (``next_retry_at``), and ``next_retry_at`` is cleared again when that attempt is announced.
    So the last row of ``kind`` of the step (none while ``error`` is empty) is the last attempt
    with a known end, and the one after it was cut off mid-call unless ``next_retry_at`` is set
    (the run stopped during the backoff).

    Returns:
        the number of the next attempt, and the row to record for an attempt that was cut off
        (written with the resumed run's announcement, so a second crash counts it too).
    """
    numbers = [a.attempt for a in made if a.step_order == row.step_order and a.kind is kind]
    last = numbers[-1] if numbers and row.error is not None else 0
    if row.next_retry_at is not None:
        return last + 1, None
    lost = last + 1
    error = f"attempt {lost} got no answer: the run stopped during the call"
    cut_off = AttemptRecord(row.step_order, kind, lost, datetime.now(UTC), 0.0, error=error)
    return lost + 1, cut_off
