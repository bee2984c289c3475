"""Polls of a step that awaits its outcome by polling (``await.poll``).

Each poll is one call, made by whichever replica resumes the parked saga when its next poll is
due, rendered like any step call but without an ``Idempotency-Key`` (a poll reads, and a read
may be repeated). Its answer is judged in this order: it matches ``success`` (the step succeeds,
its body becomes ``steps.NAME.body``) or ``failure`` (the step fails and is compensated); it is
404, 408, 425, 429, 5xx or no answer at all (keep polling, after ``Retry-After`` if the service
asked for longer than ``every``); any other 4xx fails the step; anything else keeps polling.
Each poll is recorded as an attempt of kind ``poll`` (numbered across the saga's runs) and
counted in ``saga_step_attempts_total`` as ``poll_success``, ``poll_failure`` or ``poll_pending``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from saga_runner.awaits import AwaitOutcome
from saga_runner.caller import CallResult, StepCaller, StepRequest
from saga_runner.definition import StepDefinition
from saga_runner.definition_awaits import FieldMatch, PollAwait
from saga_runner.definition_calls import CallDefinition
from saga_runner.errors import TemplateError
from saga_runner.observer import SagaObserver
from saga_runner.records import JsonValue
from saga_runner.runs import FORWARDED_TRIGGER_HEADERS, EngineSettings, Run
from saga_runner.states import AttemptKind
from saga_runner.store.batch import AttemptRecord

KEEP_POLLING_STATUSES = frozenset({404, 408, 425, 429})
"""Answers below 500 that say "not yet" (every 5xx does too)."""


@dataclass(frozen=True)
class Polled:
    """What one poll said.

    Attributes:
        outcome: ``success`` or ``failure`` when the wait is over; None: poll again.
        result: the answer's body (``success``), or what failed (``failure``).
        retry_after: seconds the service asked to wait before the next poll, if any.
        attempts: the poll's attempt row, to be written (none when no poll could be made).
    """

    outcome: AwaitOutcome | None
    result: JsonValue = None
    retry_after: float | None = None
    attempts: tuple[AttemptRecord, ...] = ()


class Poller:
    """Makes the polls of awaiting steps over the engine's step caller."""

    def __init__(
        self, caller: StepCaller, settings: EngineSettings, observer: SagaObserver
    ) -> None:
        self.caller = caller
        self.settings = settings
        self.observer = observer

    async def poll(self, run: Run, step_def: StepDefinition, order: int) -> Polled:
        """Poll once for the outcome of ``step_def`` (step ``order`` of the saga)."""
        assert step_def.await_ is not None and step_def.await_.poll is not None
        poll = step_def.await_.poll
        try:
            request = self._request(run, step_def, poll)
        except TemplateError as exc:
            return Polled(AwaitOutcome.FAILURE, {"error": f"the poll cannot be built: {exc}"})
        seconds = step_def.timeout_or(self.settings.default_timeout)
        started = datetime.now(UTC)
        answer = await self.caller.call(request, success=None, seconds=seconds)
        polled = _judge(poll, answer)
        run.polls[order] = run.polls.get(order, 0) + 1
        record = AttemptRecord(
            order,
            AttemptKind.POLL,
            run.polls[order],
            started_at=started,
            duration_ms=answer.duration * 1000,
            status_code=answer.status,
            error=answer.error,
        )
        said = "pending" if polled.outcome is None else polled.outcome.value
        self.observer.step_attempt(
            run.definition.name, step_def.name, AttemptKind.POLL, said, answer.duration
        )
        return replace(polled, attempts=(record,))

    def _request(self, run: Run, step_def: StepDefinition, poll: PollAwait) -> StepRequest:
        # ``check`` makes a poll name its service when the action publishes.
        action = step_def.action
        action_service = action.service if isinstance(action, CallDefinition) else ""
        rendered = poll.render(run.context(), action_service)
        base_url = self.settings.services.get(rendered.service)
        if base_url is None:
            raise TemplateError(f"service {rendered.service!r} is not configured any more")
        headers = {k: v for k, v in run.headers.items() if k in FORWARDED_TRIGGER_HEADERS}
        headers.update(rendered.headers)
        headers["Saga-Id"] = run.saga.id
        return StepRequest(rendered.method, str(rendered.url(base_url)), headers)


def _judge(poll: PollAwait, answer: CallResult) -> Polled:
    """What a poll's answer says (the order is the module docstring's)."""
    status = answer.status
    if status is None:  # no answer: the service may be restarting
        return Polled(None)
    if _matches(poll.success, status, answer):
        return Polled(AwaitOutcome.SUCCESS, answer.body)
    refused = 400 <= status < 500 and status not in KEEP_POLLING_STATUSES
    if _matches(poll.failure, status, answer) or refused:
        return Polled(AwaitOutcome.FAILURE, {"status": status, "body": answer.body})
    return Polled(None, retry_after=answer.retry_after)


def _matches(match: FieldMatch | None, status: int, answer: CallResult) -> bool:
    return match is not None and match.matches(status, answer.headers, answer.body)
