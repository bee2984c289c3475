"""How a step that awaits its outcome waits: parked as a row, ended by a callback, a timeout
or the saga's deadline.

Every call of an awaiting step carries ``Saga-Callback: <callback URL>/<token>``, a published
message also ``saga-callback-token: <token>`` (``with_callback``; the token's hash is recorded
before the call, the URL never is). When the action is accepted the step becomes ``waiting``
(``accepted``) and the run parks the saga: it releases its lease with ``next_run_at`` at the
wait's end (its timeout, or the saga's deadline if earlier), so the saga costs no task and no
memory while it waits. A step whose service called back while the call was still in flight is
not parked: its outcome is recorded already, so the run settles the wait at once under its
lease (parking would put the saga's due time back to the wait's end). Whoever runs a parked saga
next (the replica that recorded a callback's outcome, or the recovery loop at the wake time)
``settle``s the wait: a recorded outcome ends it; otherwise, once the timeout or the deadline
passed, the run ends it itself with that outcome, unless a callback got to the step row first
(the database decides), and if neither passed yet (a heartbeat moved the timeout), the saga
parks again.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final

from saga_runner.awaits import AwaitOutcome, new_token, token_hash
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER
from saga_runner.caller import StepRequest
from saga_runner.definition import StepDefinition
from saga_runner.errors import LeaseLost
from saga_runner.observer import SagaObserver
from saga_runner.polls import Polled, Poller
from saga_runner.records import JsonValue, SagaStep
from saga_runner.redact import Redactor
from saga_runner.runs import Run, StepFailure
from saga_runner.states import StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import AttemptRecord, StepChange, WriteBatch
from saga_runner.template import StepResult

CALLBACK_HEADER: Final = "Saga-Callback"
"""The header of an awaiting step's calls that carries its callback URL."""

DEADLINE_REASON: Final = "deadline exceeded"
"""The saga's ``failure_reason`` when its deadline passed."""

Ended = tuple[StepFailure | None, WriteBatch]


class Waits:
    """Parks and settles the waits of awaiting steps."""

    def __init__(
        self,
        store: SagaStore,
        callback_url: str,
        observer: SagaObserver,
        poller: Poller,
        redactor: Redactor,
    ) -> None:
        """Args:
        store: the saga store.
        callback_url: the callback URL without its token (``sagas.callbacks.url`` + ``path``).
        observer: told when a saga's deadline passed.
        poller: makes the polls of steps that await by polling.
        redactor: redacts a poll's deciding answer before it is stored.
        """
        self.redactor = redactor
        self.store = store
        self.callback_url = callback_url.rstrip("/")
        self.observer = observer
        self.poller = poller

    def with_callback(self, request: StepRequest) -> tuple[StepRequest, str]:
        """``request`` carrying a fresh callback URL, and the hash of its token.

        A published message carries the token on its own too (``saga-callback-token``): the
        header a completion message sends it back in.
        """
        token = new_token()
        headers = {**request.headers, CALLBACK_HEADER: f"{self.callback_url}/{token}"}
        if request.publish is not None:
            headers[CALLBACK_TOKEN_HEADER] = token
        return replace(request, headers=headers), token_hash(token)

    def accepted(
        self, run: Run, step_def: StepDefinition, order: int, record: dict[str, Any]
    ) -> StepChange:
        """The action of ``step_def`` was accepted: the step waits (and the run parks)."""
        assert step_def.await_ is not None
        now = self.store.now()
        seconds = step_def.await_.timeout
        until = now + timedelta(seconds=seconds)
        poll = step_def.await_.poll
        first = until if poll is None else min(until, now + timedelta(seconds=poll.every))
        run.parked_until = self._wake(run, first)
        columns: dict[str, JsonValue] = {
            "result": record,
            "error": None,
            "await_kind": step_def.await_.kind,
            "waiting_since": now,
            "wait_until": until,
            "wait_seconds": seconds,
        }
        return StepChange(order, StepStatus.WAITING, columns)

    def past_deadline(self, run: Run) -> bool:
        """Whether the saga's deadline has passed (no forward step may start)."""
        deadline = run.saga.deadline_at
        return deadline is not None and self.store.now() >= deadline

    def deadline_failure(self, run: Run, row: SagaStep) -> StepFailure:
        """The failure that turns a saga past its deadline to compensation (counted)."""
        self.observer.deadline_exceeded(run.definition.name)
        return StepFailure(row.step_order, row.step_name, DEADLINE_REASON, 502)

    async def settle(self, run: Run, row: SagaStep) -> Ended:
        """End the wait of ``row`` if it is over (its outcome as a write, and the failure when
        it did not succeed), or park the run again (``run.parked_until``) if it is not; the
        write carries the attempt rows of the polls made."""
        polls: tuple[AttemptRecord, ...] = ()
        while True:
            outcome = row.await_outcome
            if outcome is None:
                stop, result = self._due(run, row), None
                if stop is None and row.await_kind == "poll":
                    polled = await self._poll(run, row)
                    stop, result, polls = polled.outcome, polled.result, polls + polled.attempts
                elif stop is None:
                    assert row.wait_until is not None
                    run.parked_until = self._wake(run, row.wait_until)
                if stop is None:
                    return None, WriteBatch(attempts=polls)  # parked again (``run.parked_until``)
                force = stop is not AwaitOutcome.TIMEOUT
                # Stored like a step's answer: ``redact.fields`` never reach the records.
                stored = self.redactor.redact_body(result)
                stopped = await self.store.stop_wait(
                    run.saga.id, row.step_order, stop, force=force, result=stored
                )
                if not stopped:
                    # A callback or a heartbeat got to the step first: go by what it wrote.
                    row = (await self.store.get(run.saga.id)).steps[row.step_order]
                    if row.status is not StepStatus.WAITING:
                        # Only a newer holder of the saga moves a waiting step on.
                        raise LeaseLost(f"saga {run.saga.id}: step {row.step_name} was taken over")
                    continue
                outcome, row = stop, replace(row, await_result=result)
            failure, ended = self._ended(run, row, AwaitOutcome(outcome))
            return failure, WriteBatch(attempts=polls).then(ended)

    async def _poll(self, run: Run, row: SagaStep) -> Polled:
        """Poll once: its outcome and result when the wait is over, else park until the next
        poll (``every``, or the service's longer ``Retry-After``)."""
        step_def = run.definition.all_steps[row.step_order]
        polled = await self.poller.poll(run, step_def, row.step_order)
        if polled.outcome is not None:
            return polled
        assert step_def.await_ is not None and step_def.await_.poll is not None
        assert row.wait_until is not None
        pause = max(step_def.await_.poll.every, polled.retry_after or 0.0)
        run.parked_until = self._wake(
            run, min(row.wait_until, self.store.now() + timedelta(seconds=pause))
        )
        return polled

    def _due(self, run: Run, row: SagaStep) -> AwaitOutcome | None:
        if self.past_deadline(run):
            return AwaitOutcome.DEADLINE
        if row.wait_until is not None and self.store.now() >= row.wait_until:
            return AwaitOutcome.TIMEOUT
        return None

    def _wake(self, run: Run, until: datetime) -> datetime:
        deadline = run.saga.deadline_at
        return until if deadline is None else min(until, deadline)

    def _ended(self, run: Run, row: SagaStep, outcome: AwaitOutcome) -> Ended:
        answer = row.result if isinstance(row.result, dict) else {}
        status = answer.get("status")
        headers = answer.get("headers")
        headers = headers if isinstance(headers, dict) else {}
        name, order = row.step_name, row.step_order
        if outcome is AwaitOutcome.SUCCESS:
            result = {**answer, "body": row.await_result}
            run.results[name] = StepResult(
                status if isinstance(status, int) else 0, row.await_result, headers
            )
            change = StepChange(order, StepStatus.SUCCEEDED, {"result": result, "error": None})
            return None, WriteBatch(steps=(change,))
        # The action was accepted: whatever ended the wait, the step is compensated.
        if outcome is AwaitOutcome.DEADLINE:
            self.observer.deadline_exceeded(run.definition.name)
            reason = DEADLINE_REASON
            error = f"stopped waiting: {DEADLINE_REASON}"
        elif outcome is AwaitOutcome.TIMEOUT:
            error = "no outcome within the await's timeout (outcome unknown)"
            reason = f"step {name}: {error}"
        else:
            error = "the service reported failure"
            reason = f"step {name}: {error}"
        columns: dict[str, JsonValue] = {"result": {**answer, "accepted": True}, "error": error}
        change = StepChange(order, StepStatus.FAILED, columns)
        return StepFailure(order, name, reason, 502), WriteBatch(steps=(change,))
