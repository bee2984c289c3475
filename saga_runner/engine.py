"""The saga engine: start an instance, run its steps, compensate in reverse on failure.

Every state change is written to the store before the call it announces, and every write is
fenced by the run's ``Lease``, so a replica that lost its claim stops at its next write; the
process's ``LeaseRenewer`` keeps the lease alive while the run goes on and stops the run at once
when the store reports the lease lost. ``SagaEngine.execute`` drives an instance from whatever
state it is in (new, resumed after a crash, retried or aborted by an operator) to ``completed``,
``compensated`` or ``failed``.

Writes are batched (``WriteBatch``): a step's outcome and its attempt row are committed together
with the next step's announcement, or with the saga's end and the release of its lease, and a
trigger's instance is created with its first step already announced. A 2-step saga that succeeds
takes three commits: create + step 1 running; step 1 done + step 2 running; step 2 done + saga
completed + lease released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from saga_runner import offload
from saga_runner.attempts import AttemptLoop, CallSpec, outcome_unknown
from saga_runner.caller import CallResult, Outcome, StepRequest
from saga_runner.compensation import Compensator
from saga_runner.definition import SagaDefinition, StepDefinition
from saga_runner.errors import LeaseLost, StoreError, TemplateError
from saga_runner.leases import LeaseHold, LeaseRenewer
from saga_runner.observer import SagaObserver
from saga_runner.records import CreateResult, JsonValue, Lease, NewStep, SagaInstance, SagaStep
from saga_runner.redact import Redactor
from saga_runner.runs import (
    EngineSettings,
    Run,
    Started,
    StepFailure,
    build_request,
    known_results,
    log_run,
    started_headers,
)
from saga_runner.seal import SEALED, Sealer
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import NOTHING, AttemptRecord, StepChange, WriteBatch
from saga_runner.template import RenderContext, StepResult

log = logging.getLogger("saga_sidecar.saga")


class SagaEngine:
    """Creates and drives saga instances against one store."""

    def __init__(
        self,
        store: SagaStore,
        attempts: AttemptLoop,
        observer: SagaObserver,
        redactor: Redactor,
        settings: EngineSettings,
        leases: LeaseRenewer,
        sealer: Sealer | None = None,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.observer = observer
        self.redactor = redactor
        self.settings = settings
        self.leases = leases
        self.sealer = sealer or Sealer()
        self.compensator = Compensator(store, attempts, redactor, settings)
        self._saved_definitions: set[str] = set()

    async def start(
        self,
        definition: SagaDefinition,
        input_data: Any,
        headers: Mapping[str, str],
        idempotency_key: str | None = None,
        *,
        call_headers: Mapping[str, str] | None = None,
        client_scope: str | None = None,
    ) -> CreateResult:
        """Record a new ``running`` instance (or find the one created with the same key).

        Args:
            definition: the saga to start.
            input_data: the trigger's body.
            headers: the trigger's headers as they are recorded (in the ``started`` event).
            idempotency_key: the trigger's key, if any.
            call_headers: the trigger's headers the run will use, when it runs at once: the
                first step's call is then announced by the same write that creates the
                instance, and the result (a ``Started``) is what ``execute`` takes.
            client_scope: who may read the instance through the status URL (recorded as is).

        Raises:
            TemplateError: the ``business_id`` template cannot be rendered from the input.
        """
        await self._save_definition(definition)
        saga_id = str(uuid.uuid4())
        lowered = {k.lower(): v for k, v in headers.items()}
        ctx = RenderContext(input=input_data, headers=lowered, saga_id=saga_id)
        business_id = definition.render_business_id(ctx)
        steps = [NewStep(s.name, s.retry.attempts) for s in definition.steps]
        first: StepRequest | None = None
        if call_headers is not None and definition.steps:
            first = self._first_call(definition, saga_id, business_id, input_data, call_headers)
        if first is not None:
            steps[0] = NewStep(
                steps[0].name,
                steps[0].max_retry_count,
                StepStatus.RUNNING,
                execute_data=self.redactor.redact_call(first.as_record()),
                retry_count=1,
            )
        # A large body takes long to redact: off the loop (see ``offload``), before the clock
        # of the lease starts.
        recorded_input = await offload.off_loop(self.redactor.redact_body, input_data)
        started: dict[str, JsonValue] = {"headers": self.redactor.redact_headers(lowered)}
        sealed = self.sealer.seal(self.redactor, saga_id, input_data, lowered)
        if sealed is not None:
            started[SEALED] = sealed
        sent_at = asyncio.get_running_loop().time()
        created = await self.store.create_instance(
            business_type=definition.name,
            business_id=business_id,
            definition_hash=definition.definition_hash,
            mode=definition.mode,
            input_data=recorded_input,
            steps=steps,
            owner=self.settings.owner,
            lease_seconds=self.settings.lease_seconds,
            idempotency_key=idempotency_key,
            client_scope=client_scope,
            saga_id=saga_id,
            started=started,
        )
        if created.lease is None:
            return created
        # From here on: the run starts only after more work, and the lease is ticking.
        self.leases.track(created.lease, sent_at=sent_at)
        self.observer.saga_started(definition.name)
        return Started(created.saga, created.lease, created.steps, first)

    def _first_call(
        self,
        definition: SagaDefinition,
        saga_id: str,
        business_id: str | None,
        input_data: Any,
        call_headers: Mapping[str, str],
    ) -> StepRequest | None:
        ctx = RenderContext(
            input=input_data,
            headers={k.lower(): str(v) for k, v in call_headers.items()},
            saga_id=saga_id,
            business_id=business_id,
        )
        try:
            return build_request(
                definition.steps[0], AttemptKind.ACTION, ctx, self.settings.services
            )
        except TemplateError:
            return None  # the run finds out again, and records why the step failed

    async def _save_definition(self, definition: SagaDefinition) -> None:
        if definition.definition_hash not in self._saved_definitions:
            await self.store.save_definition(
                definition.definition_hash, definition.name, definition.to_snapshot()
            )
            self._saved_definitions.add(definition.definition_hash)

    async def execute(
        self,
        definition: SagaDefinition,
        lease: Lease,
        headers: Mapping[str, str] | None = None,
        *,
        input_data: Any = None,
        started: CreateResult | None = None,
    ) -> SagaInstance:
        """Drive the leased instance to a terminal state (or until its lease is lost).

        Args:
            definition: the definition the instance is pinned to.
            lease: this replica's claim on the instance.
            headers: the trigger's headers; when None (a resumed saga) they are read back from
                the instance's ``started`` event.
            input_data: the trigger's body as given to ``start``; when None (a resumed saga)
                the stored copy, in which ``redact.fields`` are replaced, with the replaced
                values decrypted back when ``sagas.encryption_keys`` sealed them (``seal``).
            started: what ``start`` returned for this lease: the run then begins from what was
                written (no read) and makes an announced first call at once.

        Raises:
            LeaseLost: the saga was taken over: a fenced write was refused, or the lease
                renewer found the lease lost and cut the run off, even mid-call; stop here.
        """
        run: Run | None = None
        try:
            async with self.leases.hold(lease) as hold:
                run, steps = await self._load(definition, hold, headers, input_data, started)
                self.observer.run_started(definition.name)
                try:
                    return await self._drive(run, steps)
                finally:
                    self.observer.run_stopped(definition.name)
        except LeaseLost as exc:
            # Said here, once for trigger and recovery runs alike: the operator's evidence that
            # a paused or partitioned replica was fenced off instead of overwriting the new owner.
            log.warning(
                "saga %s: lease lost to another replica, stopping: %s",
                lease.saga_id,
                exc,
                extra={"saga_id": lease.saga_id, "saga": definition.name, "event": "lease_lost"},
            )
            raise
        finally:
            if run is None or not run.released:
                with contextlib.suppress(StoreError):
                    await self.store.release(lease)

    async def _load(
        self,
        definition: SagaDefinition,
        hold: LeaseHold,
        headers: Mapping[str, str] | None,
        input_data: Any,
        started: CreateResult | None,
    ) -> tuple[Run, tuple[SagaStep, ...]]:
        lease = hold.lease
        if (
            isinstance(started, Started)
            and started.lease == lease
            and headers is not None
            and input_data is not None
        ):
            # Just created by this engine: it knows what it wrote.
            run = Run(definition, lease, hold, started.saga, _lowered(headers), input_data)
            run.first_call = started.first_call
            return run, started.steps
        detail = await self.store.get(lease.saga_id)
        withheld: str | None = None
        if headers is None or input_data is None:
            event = next((e for e in detail.events if e.action == "started"), None)
            recorded = None if event is None else event.detail
            sealed = recorded.get(SEALED) if isinstance(recorded, dict) else None
            known = self.sealer.unseal(
                lease.saga_id, detail.instance.input, started_headers(recorded), sealed
            )
            headers = known.headers if headers is None else headers
            input_data = known.input if input_data is None else input_data
            withheld = known.reason
        run = Run(definition, lease, hold, detail.instance, _lowered(headers), input_data)
        run.withheld = withheld
        run.results.update(known_results(detail.steps))
        return run, detail.steps

    async def _write(self, run: Run, batch: WriteBatch) -> None:
        run.saga = await self.store.write(run.lease, batch)

    async def _drive(self, run: Run, steps: tuple[SagaStep, ...]) -> SagaInstance:
        if run.saga.status is SagaStatus.RUNNING:
            failure, done = await self._forward(run, steps)
            if failure is None:
                return await self._complete(run, done)
            compensating = WriteBatch(
                saga_status=SagaStatus.COMPENSATING,
                saga_columns={
                    "failure_reason": failure.reason,
                    "failed_step": failure.step_order,
                    "response": {"status": failure.http_status},
                    "next_run_at": None,
                },
            )
            await self._write(run, done.then(compensating))
            log_run(run, "compensating", reason=failure.reason, step=failure.step_name)
        if run.saga.status is SagaStatus.COMPENSATING:
            return await self._compensate(run)
        return run.saga

    async def _forward(
        self, run: Run, steps: tuple[SagaStep, ...]
    ) -> tuple[StepFailure | None, WriteBatch]:
        """Run the steps not done yet; return why they stopped (None: all succeeded) and the
        last outcome, still to be written with whatever comes next."""
        done = NOTHING
        for order, (step_def, row) in enumerate(zip(run.definition.steps, steps, strict=True)):
            if row.status is StepStatus.SUCCEEDED:
                continue
            if row.status not in (StepStatus.PENDING, StepStatus.RUNNING):
                return StepFailure(order, step_def.name, row.error or "step failed", 502), done
            failure, done = await self._run_action(run, order, step_def, row, done)
            if failure is not None:
                return failure, done
        return None, done

    async def _run_action(
        self, run: Run, order: int, step_def: StepDefinition, row: SagaStep, done: WriteBatch
    ) -> tuple[StepFailure | None, WriteBatch]:
        request, run.first_call = run.first_call, None
        first_attempt = 1
        resumed = False
        if request is None:
            try:
                request = build_request(
                    step_def, AttemptKind.ACTION, run.context(), self.settings.services
                )
            except TemplateError as exc:
                # A resumed ``running`` step may have taken effect before the crash: when it
                # cannot even be re-sent, it must still be compensated (docs/SAGAS.md), so say so.
                columns: dict[str, JsonValue] = {"error": str(exc)}
                if row.status is StepStatus.RUNNING:
                    columns["result"] = {"outcome_unknown": True}
                failed = WriteBatch(steps=(StepChange(order, StepStatus.FAILED, columns),))
                status = 422 if exc.from_trigger else 502
                reason = f"step {step_def.name}: {exc}"
                return StepFailure(order, step_def.name, reason, status), done.then(failed)
            resumed = row.status is StepStatus.RUNNING
            if resumed:
                first_attempt = row.retry_count + 1
            announce = StepChange(
                order,
                StepStatus.RUNNING,
                {
                    "execute_data": self.redactor.redact_call(request.as_record()),
                    "max_retry_count": step_def.retry.attempts,
                    "retry_count": first_attempt,
                    "next_retry_at": None,
                },
            )
            running = WriteBatch(
                steps=(announce,),
                saga_status=SagaStatus.RUNNING,
                saga_columns={"current_step": order},
            )
            await self._write(run, done.then(running))
            if resumed:
                log_run(run, "resending step with unknown outcome", step=step_def.name)
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=order,
            step_name=step_def.name,
            kind=AttemptKind.ACTION,
            request=request,
            success=step_def.action.success_statuses,
            timeout=step_def.timeout_or(self.settings.default_timeout),
            retry=step_def.retry,
            first_attempt=first_attempt,
            effect_possible=resumed,
        )
        result, attempt = await self.attempts.run(run.lease, spec, announced=True)
        return self._action_finished(run, order, step_def, result, attempt)

    def _action_finished(
        self,
        run: Run,
        order: int,
        step_def: StepDefinition,
        result: CallResult,
        attempt: AttemptRecord,
    ) -> tuple[StepFailure | None, WriteBatch]:
        """The step's outcome as a batch to write with what comes next, and the failure if any."""
        record = self.redactor.redact_call(result.as_record())
        if result.outcome is Outcome.SUCCESS:
            succeeded = StepChange(order, StepStatus.SUCCEEDED, {"result": record, "error": None})
            run.results[step_def.name] = StepResult(result.status or 0, result.body, result.headers)
            return None, WriteBatch(steps=(succeeded,), attempts=(attempt,))
        unknown = outcome_unknown(result)
        reason = result.error or f"status {result.status}"
        failed = StepChange(
            order,
            StepStatus.FAILED,
            {"result": {**record, "outcome_unknown": unknown}, "error": reason},
        )
        if result.status is not None:
            run.results[step_def.name] = StepResult(result.status, result.body, result.headers)
        permanent_4xx = result.outcome is Outcome.PERMANENT and 400 <= (result.status or 0) < 500
        http_status = result.status if permanent_4xx and result.status else 502
        failure = StepFailure(order, step_def.name, f"step {step_def.name}: {reason}", http_status)
        return failure, WriteBatch(steps=(failed,), attempts=(attempt,))

    async def _complete(self, run: Run, done: WriteBatch) -> SagaInstance:
        try:
            rendered = run.definition.response.render(run.context())
            response: dict[str, Any] = {
                "status": rendered.status,
                "headers": rendered.headers,
                "body": rendered.body if rendered.has_body else None,
            }
        except TemplateError as exc:
            log_run(run, "response template failed", reason=str(exc))
            response = {"status": run.definition.response.status, "headers": {}, "body": None}
        completed = WriteBatch(
            saga_status=SagaStatus.COMPLETED, saga_columns={"response": response}, release=True
        )
        await self._finish(run, done.then(completed))
        return run.saga

    async def _finish(self, run: Run, batch: WriteBatch) -> None:
        """Write the run's last batch, which ends the saga and releases the lease."""
        run.hold.settle()
        await self._write(run, batch)
        run.released = True
        seconds = (datetime.now(UTC) - run.saga.created_at).total_seconds()
        self.observer.saga_finished(run.definition.name, run.saga.status, max(seconds, 0.0))
        log_run(run, run.saga.status.value)

    async def _compensate(self, run: Run) -> SagaInstance:
        """Undo the steps in reverse (``Compensator``), then end the saga ``compensated``, or
        ``failed`` if a step could not be undone, releasing the lease in the same write."""
        failures = await self.compensator.undo(run)
        if failures:
            end = WriteBatch(
                saga_status=SagaStatus.FAILED,
                saga_columns={"failure_reason": "; ".join(failures)},
                release=True,
            )
        else:
            end = WriteBatch(saga_status=SagaStatus.COMPENSATED, release=True)
        await self._finish(run, end)
        return run.saga


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): str(v) for k, v in headers.items()}
