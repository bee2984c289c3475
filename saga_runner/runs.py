"""What one execution of one saga instance carries, and the pure helpers the engine uses.

``Run`` is the engine's working state of one instance (its lease and hold, the instance as last
written, the trigger's headers and input, the answers of the steps so far); ``build_request``
renders a step's call from it. The rest are small decisions over stored rows: which steps still
need compensating, what a resumed run already knows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from saga_runner.awaits import AwaitOutcome
from saga_runner.caller import PUBLISH_METHOD, PublishAddress, StepRequest, replayed
from saga_runner.definition import SagaDefinition, StepDefinition
from saga_runner.definition_publish import PublishDefinition
from saga_runner.errors import TemplateError
from saga_runner.leases import LeaseHold
from saga_runner.records import CreateResult, Lease, SagaInstance, SagaStep, StepAttempt
from saga_runner.states import AttemptKind, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import WriteBatch
from saga_runner.template import RenderContext, StepResult
from saga_runner.tracing import RunSpan

log = logging.getLogger("saga_sidecar.saga")
T = TypeVar("T")

FORWARDED_TRIGGER_HEADERS = ("traceparent", "tracestate", "x-request-id")
TO_COMPENSATE = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.RUNNING,
        StepStatus.WAITING,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATION_FAILED,
    }
)
TO_CANCEL = TO_COMPENSATE | {StepStatus.FAILED}
"""A TCC step is cancelled once its try was sent at all: a refused try may have reserved."""


@dataclass(frozen=True)
class EngineSettings:
    """How this replica runs sagas."""

    owner: str
    lease_seconds: float
    default_timeout: float
    # Looked up at each call: a config reload updates it in place (``SagaRuntime.reload``).
    services: dict[str, str]
    # Where services call back awaiting steps: the callback URL without its token.
    callback_url: str = "http://127.0.0.1:8080/_saga/callbacks"


@dataclass(frozen=True, slots=True)
class Started(CreateResult):
    """A new instance whose first stage's calls were announced by the write that created it.

    Attributes:
        first_calls: those calls by ``step_order`` (one, or one per member of a parallel
            group), rendered with the trigger's own (unredacted) input and headers; the run
            started with this result makes them without writing again.
        span: the first run's span, opened with the instance (``saga_runner.tracing``).
    """

    first_calls: Mapping[int, StepRequest] = field(default_factory=dict)
    span: RunSpan | None = None


@dataclass(frozen=True)
class StepFailure:
    """Why the forward phase stopped: which step, why, and the HTTP status a sync trigger gets."""

    step_order: int
    step_name: str
    reason: str
    http_status: int


@dataclass
class Run:
    """What one execution of one instance carries along."""

    definition: SagaDefinition
    lease: Lease
    hold: LeaseHold
    saga: SagaInstance
    headers: dict[str, str]
    # The trigger's body unredacted on a first run (the stored copy is redacted).
    input: Any
    results: dict[str, StepResult] = field(default_factory=dict)
    # The first stage's calls when the instance's creation announced them (not written again).
    first_calls: dict[int, StepRequest] = field(default_factory=dict)
    # Whether the run's last write released the lease.
    released: bool = False
    # Set when ``input``/``headers`` hold redaction placeholders that could not be recovered.
    withheld: str | None = None
    # The trace context the instance's first run recorded (None: this is the first run).
    first_trace: dict[str, str] | None = None
    # The members of a parallel group write concurrently: one write of the run at a time, so
    # ``saga`` is always the instance as last written.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set while a parallel group's calls are in flight: what stops their further attempts.
    stage_stop: asyncio.Event | None = None
    # An operator's abort handed to this run (``SagaEngine.abort_here``): the failure reason.
    abort_reason: str | None = None
    # Set when the run has ended, however it ended.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a step waits for its outcome: the run parks the saga until then (``waits``).
    parked_until: datetime | None = None
    # The polls recorded so far, by step order (the next poll's attempt number follows).
    polls: dict[int, int] = field(default_factory=dict)
    # The attempt rows recorded before this run started (a resumed run's: how they ended).
    made: tuple[StepAttempt, ...] = ()

    async def write(self, store: SagaStore, batch: WriteBatch) -> SagaInstance:
        """Write ``batch`` under the run's lease (one write of the run at a time)."""
        async with self.write_lock:
            self.saga = await store.write(self.lease, batch)
            return self.saga

    def context(self) -> RenderContext:
        """What the run's templates may look up now."""
        return RenderContext(
            input=self.input,
            headers=self.headers,
            saga_id=self.saga.id,
            business_id=self.saga.business_id,
            steps=dict(self.results),
            withheld=self.withheld,
        )


def log_run(run: Run, event: str, **extra: Any) -> None:
    """Log a notable event of ``run`` (at ``info``, with the saga's identifiers)."""
    if not log.isEnabledFor(logging.INFO):
        return
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


def step_key(saga_id: str, step_name: str, kind: AttemptKind, generation: int = 1) -> str:
    """The ``Idempotency-Key`` of a step call: ``<saga>:<step>:<kind>``, then ``:<generation>``
    from generation 2 on (only a compensation's generation is ever bumped)."""
    key = f"{saga_id}:{step_name}:{kind.value}"
    return key if generation == 1 else f"{key}:{generation}"


def build_request(
    step_def: StepDefinition,
    kind: AttemptKind,
    ctx: RenderContext,
    services: Mapping[str, str],
    generation: int = 1,
) -> StepRequest:
    """Render the call ``kind`` of ``step_def`` (``ctx.headers`` lower-cased), keyed with
    ``step_key`` of ``generation``.

    Raises:
        TemplateError: the call cannot be rendered, has no such kind, or names a service that
            is not configured.
    """
    call = step_def.call(kind)
    if call is None:
        raise TemplateError(f"step {step_def.name} has no {kind.value}")
    headers = {k: v for k, v in ctx.headers.items() if k in FORWARDED_TRIGGER_HEADERS}
    if isinstance(call, PublishDefinition):
        published = call.render(ctx)
        headers.update(published.headers)
        _identify(headers, ctx, step_def, kind, generation)
        address = PublishAddress(published.broker, published.to)
        url = f"{published.broker}/{published.to}"
        return StepRequest(PUBLISH_METHOD, url, headers, published.body, address)
    base_url = services.get(call.service)
    if base_url is None:
        raise TemplateError(f"service {call.service!r} is not configured any more")
    rendered = call.render(ctx)
    headers.update(rendered.headers)
    _identify(headers, ctx, step_def, kind, generation)
    body = rendered.body if rendered.has_body else None
    return StepRequest(rendered.method, str(rendered.url(base_url)), headers, body)


def _identify(
    headers: dict[str, str],
    ctx: RenderContext,
    step_def: StepDefinition,
    kind: AttemptKind,
    generation: int,
) -> None:
    """Add the step call's ``Idempotency-Key`` and ``Saga-Id`` to ``headers``."""
    headers["Idempotency-Key"] = step_key(ctx.saga_id, step_def.name, kind, generation)
    headers["Saga-Id"] = ctx.saga_id


def undo_impossible(step_def: StepDefinition, row: SagaStep, kind: AttemptKind) -> bool:
    """Whether the step's undoing call ``kind`` needs an answer the step never got (outcome
    unknown).

    Such a compensation can never be built, so waiting for it would leave every earlier step's
    effect in place; other failures (the service is gone, the compensation keeps failing) can be
    fixed by an operator and stop the reverse walk to keep its order.
    """
    compensation = step_def.call(kind)
    if compensation is None or step_def.name not in compensation.referenced_steps():
        return False
    if row.status is StepStatus.RUNNING or reported_before_waiting(row):
        return True
    return isinstance(row.result, dict) and bool(row.result.get("outcome_unknown"))


def effect_reported(row: SagaStep) -> bool:
    """Whether the step's service reported its outcome by callback (``success`` or
    ``failure``): its action was accepted, so the step took effect whatever the action's own
    answer said. A callback is recorded only while the step is ``running`` or ``waiting``, so
    once its failure is written this cannot change any more."""
    return row.await_outcome is not None and AwaitOutcome(row.await_outcome).reported


def reported_before_waiting(row: SagaStep) -> bool:
    """Whether the step's outcome was reported while its action call was in flight and the
    call's answer then failed the step (it never waited): its answer is not the accepted one
    its compensation may need."""
    return row.await_kind is None and effect_reported(row)


def needs_compensation(row: SagaStep, kind: AttemptKind = AttemptKind.COMPENSATION) -> bool:
    """Whether the step may have taken effect and is not undone yet by ``kind`` (a TCC step's
    ``cancel`` is sent for every try that was sent, whatever its answer)."""
    if kind is AttemptKind.CANCEL:
        return row.status in TO_CANCEL
    if row.status in TO_COMPENSATE:
        return True
    if row.status is StepStatus.FAILED and effect_reported(row):
        return True  # its service called back during the call its answer then failed
    if row.status is StepStatus.FAILED and isinstance(row.result, dict):
        # ``accepted``: an awaiting step's action was accepted, whatever ended its wait.
        return bool(row.result.get("outcome_unknown") or row.result.get("accepted"))
    return False


def compensation_replayed(row: SagaStep) -> bool:
    """Whether the step's compensation failed with an answer its service replayed.

    Such a compensation's key is spent: the service answers it from its store. An operator's
    retry gives it a new key generation (see ``SagaOperations.retry``).
    """
    if row.status is not StepStatus.COMPENSATION_FAILED or not isinstance(
        row.compensate_data, dict
    ):
        return False
    response = row.compensate_data.get("response")
    headers = response.get("headers") if isinstance(response, dict) else None
    return isinstance(headers, dict) and replayed(headers)


def known_results(steps: tuple[SagaStep, ...]) -> dict[str, StepResult]:
    """The answers stored for the steps so far, as ``steps.NAME`` templates read them."""
    results = {}
    for row in steps:
        record = row.result
        if isinstance(record, dict) and isinstance(record.get("status"), int):
            headers = record.get("headers")
            results[row.step_name] = StepResult(
                record["status"], record.get("body"), headers if isinstance(headers, dict) else {}
            )
    return results


def started_headers(detail: object) -> dict[str, str]:
    """The trigger headers recorded in a ``started`` event's detail."""
    stored = detail.get("headers") if isinstance(detail, dict) else None
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


async def together(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently (one: in place) and return their results in order; when
    one raises, the others are cancelled and the error propagates."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(call)) for call in calls]
    except BaseExceptionGroup as failed:
        # Callers handle what one call raises (``LeaseLost``, ``StoreError``), not a group.
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[T]) -> T:
    return await call
