"""The saga engine: start an instance, run its steps, compensate in reverse on failure.

Every state change is written to the store before the call it announces (``AttemptLoop``), and
every write is fenced by the run's ``Lease``, so a replica that lost its claim stops at its next
write; the process's ``LeaseRenewer`` keeps the lease alive while the run goes on and stops the
run at once when the store reports the lease lost. ``SagaEngine.execute`` drives an instance from
whatever state it is in (new, resumed after a crash, retried or aborted by an operator) to
``completed``, ``compensated`` or ``failed``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from saga_runner.attempts import AttemptLoop, CallSpec, outcome_unknown
from saga_runner.caller import CallResult, Outcome, StepRequest
from saga_runner.definition import SagaDefinition, StepDefinition
from saga_runner.errors import LeaseLost, StoreError, TemplateError
from saga_runner.leases import LeaseRenewer
from saga_runner.observer import SagaObserver
from saga_runner.records import UNSET, CreateResult, Lease, NewStep, SagaInstance, SagaStep, Unset
from saga_runner.redact import Redactor
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store.base import SagaStore
from saga_runner.template import RenderContext, StepResult

log = logging.getLogger("saga_sidecar.saga")

FORWARDED_TRIGGER_HEADERS = ("traceparent", "tracestate", "x-request-id")
TO_COMPENSATE = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.RUNNING,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATION_FAILED,
    }
)


@dataclass(frozen=True)
class EngineSettings:
    """How this replica runs sagas."""

    owner: str
    lease_seconds: float
    default_timeout: float
    services: Mapping[str, str]


@dataclass(frozen=True)
class StepFailure:
    """Why the forward phase stopped: which step, why, and the HTTP status a sync trigger gets."""

    step_order: int
    step_name: str
    reason: str
    http_status: int


@dataclass
class _Run:
    """What one execution of one instance carries along."""

    definition: SagaDefinition
    lease: Lease
    saga: SagaInstance
    headers: dict[str, str]
    # The trigger's body unredacted on a first run (the stored copy is redacted).
    input: Any
    results: dict[str, StepResult] = field(default_factory=dict)

    def context(self) -> RenderContext:
        return RenderContext(
            input=self.input,
            headers=self.headers,
            saga_id=self.saga.id,
            business_id=self.saga.business_id,
            steps=dict(self.results),
        )


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
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.observer = observer
        self.redactor = redactor
        self.settings = settings
        self.leases = leases
        self._saved_definitions: set[str] = set()

    async def start(
        self,
        definition: SagaDefinition,
        input_data: Any,
        headers: Mapping[str, str],
        idempotency_key: str | None = None,
    ) -> CreateResult:
        """Record a new ``running`` instance (or find the one created with the same key).

        Raises:
            TemplateError: the ``business_id`` template cannot be rendered from the input.
        """
        await self._save_definition(definition)
        saga_id = str(uuid.uuid4())
        lowered = {k.lower(): v for k, v in headers.items()}
        ctx = RenderContext(input=input_data, headers=lowered, saga_id=saga_id)
        created = await self.store.create_instance(
            business_type=definition.name,
            business_id=definition.render_business_id(ctx),
            definition_hash=definition.definition_hash,
            mode=definition.mode,
            input_data=self.redactor.redact_body(input_data),
            steps=[NewStep(s.name, s.retry.attempts) for s in definition.steps],
            owner=self.settings.owner,
            lease_seconds=self.settings.lease_seconds,
            idempotency_key=idempotency_key,
            saga_id=saga_id,
        )
        if created.lease is not None:
            # From here on: the run starts only after more writes, and the lease is ticking.
            self.leases.track(created.lease)
        if created.created:
            await self.store.record_event(
                saga_id,
                self.settings.owner,
                "started",
                {"headers": self.redactor.redact_headers(lowered)},
            )
            self.observer.saga_started(definition.name)
        return created

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
    ) -> SagaInstance:
        """Drive the leased instance to a terminal state (or until its lease is lost).

        Args:
            definition: the definition the instance is pinned to.
            lease: this replica's claim on the instance.
            headers: the trigger's headers; when None (a resumed saga) they are read back from
                the instance's ``started`` event.
            input_data: the trigger's body as given to ``start``; when None (a resumed saga)
                the stored copy, in which ``redact.fields`` are already replaced.

        Raises:
            LeaseLost: the saga was taken over: a fenced write was refused, or the lease
                renewer found the lease lost and cut the run off, even mid-call; stop here.
        """
        try:
            async with self.leases.hold(lease):
                return await self._load_and_drive(definition, lease, headers, input_data)
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
            with contextlib.suppress(StoreError):
                await self.store.release(lease)

    async def _load_and_drive(
        self,
        definition: SagaDefinition,
        lease: Lease,
        headers: Mapping[str, str] | None,
        input_data: Any,
    ) -> SagaInstance:
        detail = await self.store.get(lease.saga_id)
        if headers is None:
            started = next((e for e in detail.events if e.action == "started"), None)
            headers = _started_headers(None if started is None else started.detail)
        run = _Run(
            definition,
            lease,
            detail.instance,
            {k.lower(): str(v) for k, v in headers.items()},
            detail.instance.input if input_data is None else input_data,
        )
        run.results.update(_known_results(detail.steps))
        self.observer.run_started(definition.name)
        try:
            return await self._drive(run, detail.steps)
        finally:
            self.observer.run_stopped(definition.name)

    async def _drive(self, run: _Run, steps: tuple[SagaStep, ...]) -> SagaInstance:
        if run.saga.status is SagaStatus.RUNNING:
            failure = await self._forward(run, steps)
            if failure is None:
                return await self._complete(run)
            run.saga = await self.store.set_saga_status(
                run.lease,
                SagaStatus.COMPENSATING,
                failure_reason=failure.reason,
                failed_step=failure.step_order,
                response={"status": failure.http_status},
                next_run_at=None,
            )
            self._log(run, "compensating", reason=failure.reason, step=failure.step_name)
        if run.saga.status is SagaStatus.COMPENSATING:
            return await self._compensate(run)
        return run.saga

    async def _forward(self, run: _Run, steps: tuple[SagaStep, ...]) -> StepFailure | None:
        for order, (step_def, row) in enumerate(zip(run.definition.steps, steps, strict=True)):
            if row.status is StepStatus.SUCCEEDED:
                continue
            if row.status not in (StepStatus.PENDING, StepStatus.RUNNING):
                return StepFailure(order, step_def.name, row.error or "step failed", 502)
            await self.store.set_saga_status(run.lease, SagaStatus.RUNNING, current_step=order)
            failure = await self._run_action(run, order, step_def, row)
            if failure is not None:
                return failure
        return None

    async def _run_action(
        self, run: _Run, order: int, step_def: StepDefinition, row: SagaStep
    ) -> StepFailure | None:
        try:
            request = self._request(run, step_def, AttemptKind.ACTION)
        except TemplateError as exc:
            # A resumed ``running`` step may have taken effect before the crash: when it cannot
            # even be re-sent, it must still be compensated (CONTRACT §5), so say so.
            cut_off = {"outcome_unknown": True} if row.status is StepStatus.RUNNING else UNSET
            await self.store.set_step_status(
                run.lease, order, StepStatus.FAILED, error=str(exc), result=cut_off
            )
            status = 422 if _caused_by_trigger(exc) else 502
            return StepFailure(order, step_def.name, f"step {step_def.name}: {exc}", status)
        resumed = row.status is StepStatus.RUNNING
        await self.store.set_step_status(
            run.lease,
            order,
            StepStatus.RUNNING,
            execute_data=self.redactor.redact_call(request.as_record()),
            max_retry_count=step_def.retry.attempts,
        )
        if resumed:
            self._log(run, "resending step with unknown outcome", step=step_def.name)
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=order,
            step_name=step_def.name,
            kind=AttemptKind.ACTION,
            request=request,
            success=_success(step_def.action.success, step_def.action.DEFAULT_SUCCESS),
            timeout=step_def.timeout_or(self.settings.default_timeout),
            retry=step_def.retry,
            first_attempt=row.retry_count + 1 if resumed else 1,
        )
        result = await self.attempts.run(run.lease, spec)
        return await self._action_finished(run, order, step_def, result)

    async def _action_finished(
        self, run: _Run, order: int, step_def: StepDefinition, result: CallResult
    ) -> StepFailure | None:
        record = self.redactor.redact_call(result.as_record())
        if result.outcome is Outcome.SUCCESS:
            await self.store.set_step_status(
                run.lease, order, StepStatus.SUCCEEDED, result=record, error=None
            )
            run.results[step_def.name] = StepResult(result.status or 0, result.body, result.headers)
            return None
        unknown = outcome_unknown(result)
        reason = result.error or f"status {result.status}"
        await self.store.set_step_status(
            run.lease,
            order,
            StepStatus.FAILED,
            result={**record, "outcome_unknown": unknown},
            error=reason,
        )
        if result.status is not None:
            run.results[step_def.name] = StepResult(result.status, result.body, result.headers)
        permanent_4xx = result.outcome is Outcome.PERMANENT and 400 <= (result.status or 0) < 500
        http_status = result.status if permanent_4xx and result.status else 502
        return StepFailure(order, step_def.name, f"step {step_def.name}: {reason}", http_status)

    def _request(self, run: _Run, step_def: StepDefinition, kind: AttemptKind) -> StepRequest:
        call = step_def.action if kind is AttemptKind.ACTION else step_def.compensation
        if call is None:
            raise TemplateError(f"step {step_def.name} has no {kind.value}")
        base_url = self.settings.services.get(call.service)
        if base_url is None:
            raise TemplateError(f"service {call.service!r} is not configured any more")
        rendered = call.render(run.context())
        headers = {k: v for k, v in run.headers.items() if k in FORWARDED_TRIGGER_HEADERS}
        headers.update(rendered.headers)
        headers["Idempotency-Key"] = f"{run.saga.id}:{step_def.name}:{kind.value}"
        headers["Saga-Id"] = run.saga.id
        body = rendered.body if rendered.has_body else None
        return StepRequest(rendered.method, str(rendered.url(base_url)), headers, body)

    async def _complete(self, run: _Run) -> SagaInstance:
        try:
            rendered = run.definition.response.render(run.context())
            response: dict[str, Any] = {
                "status": rendered.status,
                "headers": rendered.headers,
                "body": rendered.body if rendered.has_body else None,
            }
        except TemplateError as exc:
            self._log(run, "response template failed", reason=str(exc))
            response = {"status": run.definition.response.status, "headers": {}, "body": None}
        run.saga = await self.store.set_saga_status(
            run.lease, SagaStatus.COMPLETED, response=response, next_run_at=None
        )
        self._finished(run)
        return run.saga

    async def _compensate(self, run: _Run) -> SagaInstance:
        """Undo steps in reverse order; the saga is ``failed`` if any step could not be undone.

        A compensation that failed stops the walk (earlier steps stay as they are for an
        operator), unless it can never be built because it needs an answer its step never got
        (see ``_undo_impossible``): that one is recorded as failed and the walk goes on, so the
        earlier, known effects are still undone.
        """
        detail = await self.store.get(run.saga.id)
        failures: list[str] = []
        for row in reversed(detail.steps):
            if not _needs_compensation(row):
                continue
            failure = await self._compensate_step(run, row)
            if failure is None:
                continue
            failures.append(failure)
            if not _undo_impossible(run.definition.steps[row.step_order], row):
                break
        if failures:
            run.saga = await self.store.set_saga_status(
                run.lease, SagaStatus.FAILED, failure_reason="; ".join(failures), next_run_at=None
            )
        else:
            run.saga = await self.store.set_saga_status(
                run.lease, SagaStatus.COMPENSATED, next_run_at=None
            )
        self._finished(run)
        return run.saga

    async def _compensate_step(self, run: _Run, row: SagaStep) -> str | None:
        """Undo one step; return why it could not be undone, or None when it was."""
        step_def = run.definition.steps[row.step_order]
        compensation = step_def.compensation
        request: StepRequest | None = None
        problem: str | None = None
        if compensation is not None:
            try:
                request = self._request(run, step_def, AttemptKind.COMPENSATION)
            except TemplateError as exc:
                problem = str(exc)
        await self.store.set_step_status(
            run.lease,
            row.step_order,
            StepStatus.COMPENSATING,
            compensate_data=None
            if request is None
            else self.redactor.redact_call(request.as_record()),
        )
        if compensation is None:
            await self.store.set_step_status(run.lease, row.step_order, StepStatus.COMPENSATED)
            return None
        if request is None:
            reason = f"cannot build the compensation: {problem}"
            return await self._compensation_failed(run, row.step_order, step_def, reason)
        spec = CallSpec(
            saga_name=run.definition.name,
            step_order=row.step_order,
            step_name=step_def.name,
            kind=AttemptKind.COMPENSATION,
            request=request,
            success=_success(compensation.success, compensation.DEFAULT_SUCCESS),
            timeout=step_def.timeout_or(self.settings.default_timeout),
            retry=compensation.retry,
        )
        result = await self.attempts.run(run.lease, spec)
        # The compensation's answer goes next to its request: ``result`` keeps the action's.
        answered = {
            **self.redactor.redact_call(request.as_record()),
            "response": self.redactor.redact_call(result.as_record()),
        }
        if result.outcome is Outcome.SUCCESS:
            await self.store.set_step_status(
                run.lease,
                row.step_order,
                StepStatus.COMPENSATED,
                compensate_data=answered,
                error=None,
            )
            return None
        reason = result.error or f"status {result.status}"
        return await self._compensation_failed(run, row.step_order, step_def, reason, answered)

    async def _compensation_failed(
        self,
        run: _Run,
        order: int,
        step_def: StepDefinition,
        reason: str,
        compensate_data: dict[str, Any] | Unset = UNSET,
    ) -> str:
        message = f"compensation of step {step_def.name} failed: {reason}"
        await self.store.set_step_status(
            run.lease,
            order,
            StepStatus.COMPENSATION_FAILED,
            compensate_data=compensate_data,
            error=message,
        )
        self._log(run, "compensation failed", step=step_def.name, reason=reason)
        return message

    def _finished(self, run: _Run) -> None:
        seconds = (datetime.now(UTC) - run.saga.created_at).total_seconds()
        self.observer.saga_finished(run.definition.name, run.saga.status, max(seconds, 0.0))
        self._log(run, run.saga.status.value)

    def _log(self, run: _Run, event: str, **extra: Any) -> None:
        log.info(
            "saga %s %s",
            run.saga.id,
            event,
            extra={
                "saga_id": run.saga.id,
                "saga": run.definition.name,
                "business_id": run.saga.business_id,
                "event": event,
                **extra,
            },
        )


def _success(explicit: tuple[int, ...] | None, default: frozenset[int]) -> frozenset[int]:
    return default if explicit is None else frozenset(explicit)


def _undo_impossible(step_def: StepDefinition, row: SagaStep) -> bool:
    """Whether the step's compensation needs an answer the step never got (outcome unknown).

    Such a compensation can never be built, so waiting for it would leave every earlier step's
    effect in place; other failures (the service is gone, the compensation keeps failing) can be
    fixed by an operator and stop the reverse walk to keep its order.
    """
    compensation = step_def.compensation
    if compensation is None or step_def.name not in compensation.referenced_steps():
        return False
    if row.status is StepStatus.RUNNING:
        return True
    return isinstance(row.result, dict) and bool(row.result.get("outcome_unknown"))


def _needs_compensation(row: SagaStep) -> bool:
    if row.status in TO_COMPENSATE:
        return True
    if row.status is StepStatus.FAILED and isinstance(row.result, dict):
        return bool(row.result.get("outcome_unknown"))
    return False


def _known_results(steps: tuple[SagaStep, ...]) -> dict[str, StepResult]:
    results = {}
    for row in steps:
        record = row.result
        if isinstance(record, dict) and isinstance(record.get("status"), int):
            headers = record.get("headers")
            results[row.step_name] = StepResult(
                record["status"], record.get("body"), headers if isinstance(headers, dict) else {}
            )
    return results


def _started_headers(detail: object) -> dict[str, str]:
    stored = detail.get("headers") if isinstance(detail, dict) else None
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


def _caused_by_trigger(exc: TemplateError) -> bool:
    text = str(exc)
    return "{{ input" in text or "{{ headers" in text
