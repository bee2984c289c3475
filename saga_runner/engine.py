"""The saga engine: start an instance, run its stages, compensate in reverse on failure.

A saga's ``steps`` are stages run one after another (``stages.Forward``): a step, or a parallel
group whose members run together. A TCC saga (``kind: tcc``) runs its tries the same way, then
confirms every step at once, or cancels every tried step in reverse (``compensation``).

Every state change is written to the store before the call it announces, and every write is
fenced by the run's ``Lease``, so a replica that lost its claim stops at its next write; the
process's ``LeaseRenewer`` keeps the lease alive while the run goes on and stops the run at once
when the store reports the lease lost. ``SagaEngine.execute`` drives an instance from whatever
state it is in (new, resumed after a crash, retried or aborted by an operator) to ``completed``,
``compensated`` or ``failed``.

Writes are batched (``WriteBatch``): a step's outcome and its attempt row are committed together
with the next step's announcement, or with the saga's end and the release of its lease, and a
trigger's instance is created with its first stage already announced. A 2-step saga that
succeeds takes three commits: create + step 1 running; step 1 done + step 2 running; step 2 done
+ saga completed + lease released. The members of a parallel group are announced in one write
and their outcomes written together; the run writes one batch at a time (``Run.write``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from saga_runner import offload
from saga_runner.alarm import Alarm
from saga_runner.attempts import AttemptLoop
from saga_runner.caller import StepRequest
from saga_runner.compensation import Compensator
from saga_runner.definition import SagaDefinition
from saga_runner.errors import LeaseLost, StoreError, TemplateError
from saga_runner.leases import LeaseHold, LeaseRenewer
from saga_runner.observer import SagaObserver
from saga_runner.polls import Poller
from saga_runner.records import (
    Claim,
    CreateResult,
    JsonValue,
    Lease,
    NewStep,
    SagaInstance,
    SagaStep,
)
from saga_runner.redact import Redactor
from saga_runner.runs import (
    EngineSettings,
    Run,
    Started,
    build_request,
    known_results,
    log_run,
    started_headers,
)
from saga_runner.seal import SEALED, Sealer
from saga_runner.stages import Forward
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import NOTHING, WriteBatch
from saga_runner.template import RenderContext
from saga_runner.tracing import NULL_TRACER, TRACE_KEY, RunSpan, SagaTracer, recorded_trace
from saga_runner.waits import Waits

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
        tracer: SagaTracer = NULL_TRACER,
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.observer = observer
        self.redactor = redactor
        self.settings = settings
        self.leases = leases
        self.sealer = sealer or Sealer()
        self.tracer = tracer
        self.compensator = Compensator(store, attempts, redactor, settings)
        poller = Poller(attempts.caller, settings, observer)
        self.waits = Waits(store, settings.callback_url, observer, poller, redactor)
        self.forward = Forward(store, attempts, redactor, settings, self.waits)
        self._saved_definitions: set[str] = set()
        self._runs: dict[str, Run] = {}
        # Told when a run parks a saga, so the recovery loop wakes when it is due.
        self.alarm = Alarm(store.now)

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
        phase = None if definition.kind == "saga" else definition.forward_kind
        stage_of = {order: stage.index for stage in definition.stages for order in stage.orders}
        steps = [
            NewStep(s.name, s.retry.attempts, stage=stage_of[n], phase=phase)
            for n, s in enumerate(definition.all_steps)
        ]
        first: dict[int, StepRequest] = {}
        if call_headers is not None:
            first = self._first_calls(definition, saga_id, business_id, input_data, call_headers)
        for order, request in first.items():
            steps[order] = replace(
                steps[order],
                status=StepStatus.RUNNING,
                execute_data=self.redactor.redact_call(request.as_record()),
                retry_count=1,
            )
        # A large body takes long to redact: off the loop (see ``offload``), before the clock
        # of the lease starts.
        recorded_input = await offload.off_loop(self.redactor.redact_body, input_data)
        started: dict[str, JsonValue] = {"headers": self.redactor.redact_headers(lowered)}
        sealed = self.sealer.seal(self.redactor, saga_id, input_data, lowered)
        if sealed is not None:
            started[SEALED] = sealed
        # The first run's span starts with the instance, so the instance can record it for the
        # runs that resume it. A span never ended (the key's saga existed) is never exported.
        span = self.tracer.run(saga_id, definition.name, first_run=None)
        trace = span.trace_context()
        if trace:
            started[TRACE_KEY] = trace
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
            deadline_seconds=definition.deadline,
        )
        if created.lease is None:
            return created
        # From here on: the run starts only after more work, and the lease is ticking.
        self.leases.track(created.lease, sent_at=sent_at)
        self.observer.saga_started(definition.name)
        return Started(created.saga, created.lease, created.steps, first, span)

    def _first_calls(
        self,
        definition: SagaDefinition,
        saga_id: str,
        business_id: str | None,
        input_data: Any,
        call_headers: Mapping[str, str],
    ) -> dict[int, StepRequest]:
        """The first stage's calls by ``step_order`` (all of them, or none)."""
        ctx = RenderContext(
            input=input_data,
            headers={k.lower(): str(v) for k, v in call_headers.items()},
            saga_id=saga_id,
            business_id=business_id,
        )
        kind = definition.forward_kind
        if any(
            definition.all_steps[order].awaits_callback for order in definition.stages[0].orders
        ):
            return {}  # its callback token is recorded before it is announced: the run does it
        try:
            return {
                order: build_request(definition.all_steps[order], kind, ctx, self.settings.services)
                for order in definition.stages[0].orders
            }
        except TemplateError:
            return {}  # the run finds out again, and records why the step failed

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
        saga, run = await self._execute_once(definition, lease, headers, input_data, started)
        while run is not None and run.parked_until is not None:
            # A callback may have come before the step was parked: its replica could not claim
            # the saga then, so this one goes on with it.
            claim = await self._claim_if_answered(lease.saga_id)
            if claim is None:
                break
            headers, input_data = run.headers, run.input
            saga, run = await self._execute_once(definition, claim.lease, headers, input_data, None)
        return saga

    async def _claim_if_answered(self, saga_id: str) -> Claim | None:
        """Claim a parked saga whose waiting step got its outcome already, if nobody has."""
        detail = await self.store.get(saga_id)
        if not any(row.status is StepStatus.WAITING and row.await_outcome for row in detail.steps):
            return None
        sent_at = asyncio.get_running_loop().time()
        claim = await self.store.claim_one(
            saga_id, self.settings.owner, self.settings.lease_seconds
        )
        if claim is not None:
            self.leases.track(claim.lease, sent_at=sent_at)
        return claim

    async def _execute_once(
        self,
        definition: SagaDefinition,
        lease: Lease,
        headers: Mapping[str, str] | None,
        input_data: Any,
        started: CreateResult | None,
    ) -> tuple[SagaInstance, Run | None]:
        run: Run | None = None
        try:
            async with self.leases.hold(lease) as hold:
                run, steps = await self._load(definition, hold, headers, input_data, started)
                span = self._run_span(run, started)
                self.observer.run_started(definition.name)
                self._runs[lease.saga_id] = run
                try:
                    with span.running():
                        saga = await self._drive(run, steps)
                        span.ended_as(saga.status)
                        return saga, run
                finally:
                    if self._runs.get(lease.saga_id) is run:
                        del self._runs[lease.saga_id]
                    run.finished.set()
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

    def abort_here(self, saga_id: str, reason: str) -> Run | None:
        """Abort this process's run of ``saga_id`` while a parallel group of it is in flight.

        No member starts another attempt; the calls in flight finish and their outcomes are
        recorded; then the run turns to compensation with ``reason``. Returns the run (await
        ``run.finished``), or None when no group of that saga is in flight here (the operator
        then takes the saga over, which cuts the run off).
        """
        run = self._runs.get(saga_id)
        if run is None or run.stage_stop is None or run.abort_reason is not None:
            return None
        run.abort_reason = reason
        run.stage_stop.set()
        return run

    def _run_span(self, run: Run, started: CreateResult | None) -> RunSpan:
        """The span ``start`` opened for this run, or a new one linked to the first run's."""
        span = started.span if isinstance(started, Started) else None
        if span is not None and started is not None and started.lease == run.lease:
            return span
        return self.tracer.run(run.saga.id, run.definition.name, first_run=run.first_trace)

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
            run.first_calls = dict(started.first_calls)
            return run, started.steps
        detail = await self.store.get(lease.saga_id)
        withheld: str | None = None
        event = next((e for e in detail.events if e.action == "started"), None)
        recorded = None if event is None else event.detail
        if headers is None or input_data is None:
            sealed = recorded.get(SEALED) if isinstance(recorded, dict) else None
            known = self.sealer.unseal(
                lease.saga_id, detail.instance.input, started_headers(recorded), sealed
            )
            headers = known.headers if headers is None else headers
            input_data = known.input if input_data is None else input_data
            withheld = known.reason
        run = Run(definition, lease, hold, detail.instance, _lowered(headers), input_data)
        run.withheld = withheld
        run.first_trace = recorded_trace(recorded)
        run.results.update(known_results(detail.steps))
        run.polls = dict(
            Counter(a.step_order for a in detail.attempts if a.kind is AttemptKind.POLL)
        )
        run.made = detail.attempts
        return run, detail.steps

    async def _drive(self, run: Run, steps: tuple[SagaStep, ...]) -> SagaInstance:
        if run.saga.status is SagaStatus.RUNNING:
            if any(row.phase is AttemptKind.CONFIRM for row in steps):
                # The decision to confirm was recorded: confirms go on, a cancel never comes.
                return await self._confirm(run, NOTHING)
            failure, done = await self.forward.run(run, steps)
            while failure is None and run.parked_until is not None:
                if not await self._answered_during_call(run, done):
                    return await self._park(run, done)
                # Its service called back before the call's answer: end the wait under this
                # lease (parking would postpone the callback's due time to the wait's end).
                await run.write(self.store, done)
                run.parked_until = None
                steps = (await self.store.get(run.saga.id)).steps
                failure, done = await self.forward.run(run, steps)
            if failure is None:
                if run.definition.kind == "tcc":
                    return await self._confirm(run, done)
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
            await run.write(self.store, done.then(compensating))
            log_run(run, "compensating", reason=failure.reason, step=failure.step_name)
        if run.saga.status is SagaStatus.COMPENSATING:
            return await self._compensate(run)
        return run.saga

    async def _answered_during_call(self, run: Run, done: WriteBatch) -> bool:
        """Whether a step ``done`` accepts (to wait for its callback) already has its outcome
        recorded: its service called back while the call was in flight."""
        accepted = [
            change.step_order
            for change in done.steps
            if change.status is StepStatus.WAITING
            and run.definition.all_steps[change.step_order].awaits_callback
        ]
        if not accepted:
            return False
        steps = (await self.store.get(run.saga.id)).steps
        return any(steps[order].await_outcome for order in accepted)

    async def _park(self, run: Run, done: WriteBatch) -> SagaInstance:
        """A step waits for its outcome: give the saga up until ``run.parked_until`` (its
        outcome makes it due sooner), keeping no task and no memory for it."""
        parked = WriteBatch(saga_columns={"next_run_at": run.parked_until}, release=True)
        run.hold.settle()
        await run.write(self.store, done.then(parked))
        run.released = True
        if run.parked_until is not None:
            self.alarm.due(run.parked_until)
        log_run(run, "waiting", until=run.parked_until.isoformat() if run.parked_until else None)
        return run.saga

    async def _confirm(self, run: Run, done: WriteBatch) -> SagaInstance:
        """Confirm every step of a TCC saga whose tries all succeeded; ``completed``, or
        ``failed`` for an operator when a confirm ran out of attempts."""
        failures = await self.compensator.confirm(run, done)
        if not failures:
            return await self._complete(run, NOTHING)
        end = WriteBatch(
            saga_status=SagaStatus.FAILED,
            saga_columns={"failure_reason": "; ".join(failures), "response": {"status": 502}},
            release=True,
        )
        await self._finish(run, end)
        return run.saga

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
        await run.write(self.store, batch)
        run.released = True
        seconds = (datetime.now(UTC) - run.saga.created_at).total_seconds()
        self.observer.saga_finished(
            run.definition.name, run.saga.status, max(seconds, 0.0), saga_id=run.saga.id
        )
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
