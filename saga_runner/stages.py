"""The forward phase of a saga: its stages, one after another.

A stage is one item of the saga's ``steps``: a single step, or a parallel group whose members
start together; a step that awaits its outcome is a stage that may also wait (``Waits``).
``Forward`` walks the stages not done yet, and starts none once the saga's deadline passed. For
each one it announces every member's forward call (``action``, or a TCC step's ``try``) in one
write, together with the previous stage's outcomes, then makes the calls concurrently. When a
member fails for good, the others start no further attempt: the calls in flight finish and their
outcomes are recorded, and the stage's outcomes are handed back to the engine, to be written with
whatever comes next (the next stage's announcement, the saga's end, or the turn to
compensation). An awaiting step's accepted action is written ``waiting``, and the run parks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from saga_runner.attempts import AttemptLoop, CallSpec, RunPhase, outcome_unknown
from saga_runner.caller import CallResult, Outcome, StepRequest
from saga_runner.definition import Stage, StepDefinition
from saga_runner.errors import TemplateError
from saga_runner.publishing import broker_down_attempts
from saga_runner.records import JsonValue, SagaStep
from saga_runner.redact import Redactor
from saga_runner.runs import EngineSettings, Run, StepFailure, build_request, log_run, together
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import NOTHING, AttemptRecord, StepChange, WriteBatch
from saga_runner.template import StepResult
from saga_runner.waits import Waits

StageOutcome = tuple[StepFailure | None, WriteBatch]
"""Why a stage (or a member) failed, None when it succeeded, and the write recording it."""


@dataclass(frozen=True)
class _Call:
    """One member's forward call, rendered, with how its attempts go on."""

    order: int
    step_def: StepDefinition
    request: StepRequest
    first_attempt: int
    resumed: bool
    announce: StepChange | None
    """The write that announces it (None: the instance's creation already did)."""
    token_hash: str | None = None
    """The hash of the callback token its request carries (an awaiting step's), recorded
    before the call is made."""
    free_before: int = 0
    """Attempts of a resumed call that found the broker down before the crash."""


class Forward(RunPhase):
    """Runs the stages of one run that are not done yet."""

    def __init__(
        self,
        store: SagaStore,
        attempts: AttemptLoop,
        redactor: Redactor,
        settings: EngineSettings,
        waits: Waits,
    ) -> None:
        super().__init__(store, attempts, redactor, settings)
        self.waits = waits

    async def run(self, run: Run, steps: Sequence[SagaStep]) -> StageOutcome:
        """Run the stages not done yet; return why they stopped (None: all succeeded) and the
        last stage's outcomes, still to be written with whatever comes next."""
        done = NOTHING
        for stage in run.definition.stages:
            rows = [steps[order] for order in stage.orders]
            if all(row.status is StepStatus.SUCCEEDED for row in rows):
                continue
            if rows[0].status is StepStatus.WAITING:
                failure, batch = await self.waits.settle(run, rows[0])
                done = done.then(batch)
                if failure is not None or run.parked_until is not None:
                    return failure, done
                continue
            for row in rows:
                if row.status not in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SUCCEEDED):
                    reason = row.error or "step failed"
                    return StepFailure(row.step_order, row.step_name, reason, 502), done
            if self.waits.past_deadline(run):
                return self.waits.deadline_failure(run, rows[0]), done
            failure, done = await self._stage(run, stage, rows, done)
            if failure is not None or run.parked_until is not None:
                return failure, done
        return None, done

    async def _stage(
        self, run: Run, stage: Stage, rows: Sequence[SagaStep], done: WriteBatch
    ) -> StageOutcome:
        calls: list[_Call] = []
        unbuilt: list[StageOutcome] = []
        for row in rows:
            if row.status is StepStatus.SUCCEEDED:
                continue
            built = self._prepare(run, row)
            if isinstance(built, _Call):
                calls.append(built)
            else:
                unbuilt.append(built)
        if unbuilt:
            # A member that cannot even be sent fails the stage before any call of it starts;
            # members resumed mid-call stay ``running`` and are compensated (outcome unknown).
            failure = unbuilt[0][0]
            for _failure, batch in unbuilt:
                done = done.then(batch)
            return failure, done
        await self._record_tokens(run, calls)
        announced = tuple(call.announce for call in calls if call.announce is not None)
        if announced:
            running = WriteBatch(
                steps=announced,
                saga_status=SagaStatus.RUNNING,
                saga_columns={"current_step": calls[0].order},
            )
            await run.write(self.store, done.then(running))
        elif done != NOTHING:
            await run.write(self.store, done)
        for call in calls:
            if call.resumed:
                log_run(run, "resending step with unknown outcome", step=call.step_def.name)
        stop = asyncio.Event() if stage.parallel else None
        failures: list[StepFailure] = []
        run.stage_stop = stop
        try:
            outcomes = await together([self._call(run, call, stop, failures) for call in calls])
        finally:
            run.stage_stop = None
        batch = NOTHING
        for outcome in outcomes:
            batch = batch.then(outcome)
        if run.abort_reason is not None and not failures:
            # An operator aborted the group: its calls in flight have ended, now undo it.
            first = calls[0]
            failures.append(StepFailure(first.order, first.step_def.name, run.abort_reason, 502))
        return (failures[0] if failures else None), batch

    async def _record_tokens(self, run: Run, calls: Sequence[_Call]) -> None:
        """Bind the callback tokens of the calls to their steps, before any call is made (a
        callback may come before the call's own answer)."""
        for call in calls:
            if call.token_hash is not None:
                await self.store.add_callback_token(run.saga.id, call.order, call.token_hash)

    def _prepare(self, run: Run, row: SagaStep) -> _Call | StageOutcome:
        """A member's call and its announcement, or why it cannot be sent (with the write
        that records it)."""
        order = row.step_order
        step_def = run.definition.all_steps[order]
        kind = run.definition.forward_kind
        phase = None if kind is AttemptKind.ACTION else kind
        first = run.first_calls.pop(order, None)
        if first is not None:
            return _Call(order, step_def, first, 1, False, None)
        try:
            request = build_request(step_def, kind, run.context(), self.settings.services)
        except TemplateError as exc:
            # A resumed ``running`` step may have taken effect before the crash: when it
            # cannot even be re-sent, it must still be compensated (docs/SAGAS.md), so say so.
            columns: dict[str, JsonValue] = {"error": str(exc)}
            if row.status is StepStatus.RUNNING:
                columns["result"] = {"outcome_unknown": True}
            failed = WriteBatch(steps=(StepChange(order, StepStatus.FAILED, columns, phase),))
            status = 422 if exc.from_trigger else 502
            reason = f"step {step_def.name}: {exc}"
            return StepFailure(order, step_def.name, reason, status), failed
        resumed = row.status is StepStatus.RUNNING
        first_attempt = row.retry_count + 1 if resumed else 1
        announce = StepChange(
            order,
            StepStatus.RUNNING,
            {
                "execute_data": self.redactor.redact_call(request.as_record()),
                "max_retry_count": step_def.retry.attempts,
                "retry_count": first_attempt,
                "next_retry_at": None,
            },
            phase,
        )
        hashed = None
        if step_def.awaits_callback:
            # The callback URL goes on the call only: never into the recorded request.
            request, hashed = self.waits.with_callback(request)
        free = broker_down_attempts(run.made, order, kind, first_attempt) if resumed else 0
        return _Call(order, step_def, request, first_attempt, resumed, announce, hashed, free)

    async def _call(
        self, run: Run, call: _Call, stop: asyncio.Event | None, failures: list[StepFailure]
    ) -> WriteBatch:
        """Make one member's call; return its outcome's write (a failure joins ``failures``,
        in the order they happened, and stops the other members' further attempts)."""
        kind = run.definition.forward_kind
        forward = call.step_def.call(kind)
        success = forward.success_statuses if forward is not None else frozenset()
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=call.order,
            step_name=call.step_def.name,
            kind=kind,
            request=call.request,
            success=success,
            timeout=call.step_def.timeout_or(self.settings.default_timeout),
            retry=call.step_def.retry,
            first_attempt=call.first_attempt,
            free_before=call.free_before,
            effect_possible=call.resumed,
        )
        result, attempt = await self.attempts.run(run, spec, announced=True, stop=stop)
        failure, batch = self._finished(run, call, result, attempt)
        if failure is not None:
            failures.append(failure)
            if stop is not None:
                stop.set()
        return batch

    def _finished(
        self, run: Run, call: _Call, result: CallResult, attempt: AttemptRecord | None
    ) -> StageOutcome:
        """The member's outcome as a write to make with what comes next, and its failure."""
        order, name = call.order, call.step_def.name
        kind = run.definition.forward_kind
        phase = None if kind is AttemptKind.ACTION else kind
        attempts = () if attempt is None else (attempt,)
        record = self.redactor.redact_call(result.as_record())
        if result.outcome is Outcome.SUCCESS and call.step_def.awaits:
            run.results[name] = StepResult(result.status or 0, result.body, result.headers)
            return None, WriteBatch(
                steps=(self.waits.accepted(run, call.step_def, order, record),), attempts=attempts
            )
        if result.outcome is Outcome.SUCCESS:
            succeeded = StepChange(
                order, StepStatus.SUCCEEDED, {"result": record, "error": None}, phase
            )
            run.results[name] = StepResult(result.status or 0, result.body, result.headers)
            return None, WriteBatch(steps=(succeeded,), attempts=attempts)
        unknown = outcome_unknown(result)
        reason = result.error or f"status {result.status}"
        columns: dict[str, JsonValue] = {
            "result": {**record, "outcome_unknown": unknown},
            "error": reason,
        }
        if attempt is None:
            columns["next_retry_at"] = None  # stopped during its backoff
        failed = StepChange(order, StepStatus.FAILED, columns, phase)
        if result.status is not None:
            run.results[name] = StepResult(result.status, result.body, result.headers)
        permanent_4xx = result.outcome is Outcome.PERMANENT and 400 <= (result.status or 0) < 500
        http_status = result.status if permanent_4xx and result.status else 502
        failure = StepFailure(order, name, f"step {name}: {reason}", http_status)
        return failure, WriteBatch(steps=(failed,), attempts=attempts)
