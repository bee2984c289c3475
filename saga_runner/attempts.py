"""The retry loop of one step call (an action or a compensation), with persisted backoff.

``AttemptLoop.run`` writes "about to call" before every attempt (so a replica that lost its lease
stops before calling; the caller may have written the first one already), calls, and on a
retryable failure records the attempt together with when the next one is due (``next_retry_at``
on the step, ``next_run_at`` on the saga) before sleeping, so a restarted sidecar honours the
backoff instead of hammering the upstream. A failed answer the service replayed
(``Idempotent-Replayed: true``) ends the loop: a retry with the same key would get it again.
The last attempt's row is handed back, for the caller to write with the step's outcome in one
commit. A publish that found its broker down (nothing sent) uses up no retry: the saga waits for
the broker, backing off up to ``max_backoff``, until it is back (or an operator aborts it).
A ``stop`` event (set when a sibling in a parallel group failed for good) ends the loop
before its next attempt: the call in flight finishes, no new one starts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpsemantics
from saga_runner.caller import CallResult, Outcome, StepCaller, StepRequest
from saga_runner.observer import SagaObserver
from saga_runner.redact import Redactor
from saga_runner.retry import RetryPolicy
from saga_runner.runs import EngineSettings, Run
from saga_runner.states import AttemptKind, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import AttemptRecord, StepChange, WriteBatch
from saga_runner.tracing import NULL_TRACER, SagaTracer, StepCall, carrying

log = logging.getLogger("saga_sidecar.saga")

Sleep = Callable[[float], Awaitable[None]]


IN_FLIGHT_PROBLEM = "urn:saga-sidecar:problem:idempotency-in-flight"
"""The problem type a saga-sidecar answers (409) while a request with the same key still runs."""


def outcome_unknown(result: CallResult) -> bool:
    """Whether a failed call may still have taken effect upstream (so it must be compensated).

    A call is judged by all its attempts, not the last one: once any attempt may have taken
    effect, a later 503 or refusal does not undo it. A definite answer that says the request was
    refused or not processed (a 4xx, or 503) is known; a timeout, a reset after sending, or
    another 5xx is not.
    """
    if result.earlier_attempt_unknown:
        return True
    if result.status is None:
        return result.sent
    return httpsemantics.outcome_unknown(result.status)


@dataclass(frozen=True)
class CallSpec:
    """One call to attempt: which step, which kind, what to send, what counts as success."""

    saga_name: str
    step_order: int
    step_name: str
    kind: AttemptKind
    request: StepRequest
    success: Collection[int]
    timeout: float
    retry: RetryPolicy
    first_attempt: int = 1
    free_before: int = 0
    """How many attempts before ``first_attempt`` (an earlier run's, this call being resumed
    after a crash) found the broker down: like this run's, they used up no retry."""
    effect_possible: bool = False
    """An earlier run of this call may have taken effect (it was resumed after a crash)."""


def still_running(result: CallResult, effect_possible: bool) -> bool:
    """Whether a 409 means "your earlier attempt is still in flight" rather than a refusal.

    Step calls carry an ``Idempotency-Key``; an idempotent service answers 409 to a retry that
    arrives while the first attempt with that key is still being processed. That is the case
    when an earlier attempt may have reached the service (it timed out, or failed after
    sending), or when the answer is a saga-sidecar's in-flight problem.
    """
    if result.status != 409 or result.outcome is not Outcome.PERMANENT:
        return False
    if effect_possible:
        return True
    return isinstance(result.body, dict) and result.body.get("type") == IN_FLIGHT_PROBLEM


class AttemptLoop:
    """Runs the attempts of one call under a lease, recording each one in the store."""

    def __init__(
        self,
        store: SagaStore,
        caller: StepCaller,
        observer: SagaObserver,
        redactor: Redactor,
        *,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        tracer: SagaTracer = NULL_TRACER,
    ) -> None:
        self.store = store
        self.caller = caller
        self.observer = observer
        self.redactor = redactor
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.tracer = tracer

    async def run(
        self,
        run: Run,
        spec: CallSpec,
        *,
        announced: bool = False,
        stop: asyncio.Event | None = None,
    ) -> tuple[CallResult, AttemptRecord | None]:
        """Attempt ``spec`` until it succeeds, fails permanently, its attempts run out, or
        ``stop`` is set.

        Args:
            run: the run (its lease, and its one write at a time).
            spec: the call.
            announced: the caller has already written the first attempt's "about to call"
                (status, ``retry_count``, ``next_retry_at`` cleared) with its own changes.
            stop: when set, no further attempt starts (the one in flight finishes).

        Returns:
            the last attempt's result and its attempt row, which the caller writes together
            with the outcome it records (the rows of retried attempts are already written: None
            when the last one was, because ``stop`` ended the backoff after it).
        """
        status = StepStatus.COMPENSATING if spec.kind.undoes else StepStatus.RUNNING
        phase = None if spec.kind in (AttemptKind.ACTION, AttemptKind.COMPENSATION) else spec.kind
        attempt = spec.first_attempt
        effect_possible = spec.effect_possible
        free = spec.free_before  # attempts that found the broker down: they use up no retry
        down_streak = 0  # of them, the latest in a row (their backoff grows)
        while True:
            if not announced:
                announce: dict[str, Any] = {"next_retry_at": None}
                if spec.kind.forward:
                    announce["retry_count"] = attempt
                change = StepChange(spec.step_order, status, announce, phase)
                await run.write(self.store, WriteBatch(steps=(change,)))
            announced = False
            result, record = await self._attempt(run.lease.saga_id, spec, attempt)
            if still_running(result, effect_possible):
                result = replace(result, outcome=Outcome.RETRYABLE)
            if effect_possible and result.outcome is not Outcome.SUCCESS:
                result = replace(result, earlier_attempt_unknown=True)
            effect_possible = effect_possible or outcome_unknown(result)
            free += result.broker_down
            down_streak = down_streak + 1 if result.broker_down else 0
            if result.outcome is not Outcome.RETRYABLE:
                return result, record
            if not (result.broker_down or spec.retry.can_retry(attempt - free)):
                return result, record
            if stop is not None and stop.is_set():
                return result, record
            if result.replayed:
                # The service answers this key from its store: every retry would get the same
                # answer back. Only a new key (an operator's retry) makes a real new attempt.
                return result, record
            # A step service's Retry-After is honoured, but never beyond the step's max_backoff.
            asked = min(result.retry_after or 0.0, spec.retry.max_backoff)
            backoff = down_streak if result.broker_down else attempt - free
            delay = max(spec.retry.delay(backoff, self.rng), asked)
            due = datetime.now(UTC) + timedelta(seconds=delay)
            # One commit: the attempt, the saga's next_run_at (what recovery obeys, so a new
            # owner never calls too early) and the step's detail.
            columns: dict[str, Any] = {
                "next_retry_at": due,
                "error": result.error or f"status {result.status}",
            }
            if spec.kind.forward:
                # ``result`` is the action's answer, which ``steps.NAME`` templates read (also
                # when a compensation is resumed): a compensation's answer must not replace it.
                columns["result"] = self.redactor.redact_call(result.as_record())
            await run.write(
                self.store,
                WriteBatch(
                    steps=(StepChange(spec.step_order, status, columns, phase),),
                    attempts=(record,),
                    saga_columns={"next_run_at": due},
                ),
            )
            if await self._stopped_during(delay, stop):
                return result, None
            attempt += 1

    async def _stopped_during(self, delay: float, stop: asyncio.Event | None) -> bool:
        """Sleep ``delay`` seconds (the backoff); True when ``stop`` was set meanwhile."""
        if stop is None:
            await self.sleep(delay)
            return False
        sleeper = asyncio.ensure_future(self.sleep(delay))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        return stop.is_set()

    async def _attempt(
        self, saga_id: str, spec: CallSpec, attempt: int
    ) -> tuple[CallResult, AttemptRecord]:
        started = datetime.now(UTC)
        call = StepCall(
            saga_id, spec.saga_name, spec.step_name, spec.kind.value, attempt, spec.request
        )
        with self.tracer.call(call) as span:
            request = carrying(spec.request, span.headers())
            result = await self.caller.call(request, success=spec.success, seconds=spec.timeout)
            span.answered(result)
        record = AttemptRecord(
            spec.step_order,
            spec.kind,
            attempt,
            started_at=started,
            duration_ms=result.duration * 1000,
            status_code=result.status,
            error=result.error,
        )
        self.observer.step_attempt(
            spec.saga_name, spec.step_name, spec.kind, result.outcome.value, result.duration
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "saga step %s %s attempt %d: %s",
                spec.step_name,
                spec.kind.value,
                attempt,
                result.status or result.error,
                extra={
                    "saga_id": saga_id,
                    "saga": spec.saga_name,
                    "step": spec.step_name,
                    "attempt": attempt,
                    "call": spec.kind.value,
                    "status": result.status,
                    "error": result.error,
                    "duration_ms": round(result.duration * 1000, 3),
                },
            )
        return result, record


class RunPhase:
    """A phase of a run that calls steps (its forward stages, its compensations or confirms):
    the store it records in, the attempt loop it calls with, the redactor and the settings."""

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
