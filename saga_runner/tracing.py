"""What the engine traces as sagas run, as a Protocol, so OpenTelemetry stays out of the engine.

Two kinds of span, as docs/OPERATIONS.md (Tracing) shows them:

- a **run** (``SagaTracer.run``): one execution of one instance, from its creation (or from the
  moment a replica or an operator resumes it) until it ends or stops. A new instance records the
  first run's W3C trace context (``RunSpan.trace_context``) in its ``started`` event, under
  ``TRACE_KEY``; every later run of that instance is linked to it (``first_run``).
- a **call** (``SagaTracer.call``): one attempt of a step's action or compensation, a child of
  the run. The call carries ``CallSpan.headers`` (``traceparent``/``tracestate``) in place of the
  trigger's, so the service's own spans are children of the attempt.

Stages yet to come use the same two seams: a poll or a message published to a broker is a
``call`` of its own kind (its ``headers`` go into the message's headers); a callback or a
consumed message resumes the instance in a ``run`` linked through the recorded trace context.

The proxy implements ``SagaTracer`` with OpenTelemetry when ``tracing.endpoint`` is set; every
other caller uses ``NULL_TRACER``, whose spans do nothing and carry no headers, so the step calls
keep the trigger's ``traceparent`` unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from saga_runner.caller import CallResult, StepRequest
from saga_runner.states import SagaStatus

TRACE_KEY = "trace"
"""Where a ``started`` event's detail keeps the first run's trace context."""
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


@dataclass(frozen=True, slots=True)
class StepCall:
    """One attempt of a step call, as a call span describes it.

    Attributes:
        saga_id: the instance.
        saga: the saga's name.
        step: the step's name.
        kind: ``action`` or ``compensation``.
        attempt: the attempt's number (1 for the first).
        request: the rendered call.
    """

    saga_id: str
    saga: str
    step: str
    kind: str
    attempt: int
    request: StepRequest


class RunSpan(Protocol):
    """One run of one saga instance."""

    def trace_context(self) -> dict[str, str]:
        """The run's W3C trace context headers (empty when tracing is off)."""
        ...

    def running(self) -> AbstractContextManager[None]:
        """Make the run the parent of the spans started inside; end it on leaving (an
        exception ends it as an error)."""
        ...

    def ended_as(self, status: SagaStatus) -> None:
        """Record the status the run left the instance in."""
        ...


class CallSpan(AbstractContextManager["CallSpan"], Protocol):
    """One attempt of a step call; a context manager that ends the span on leaving."""

    def headers(self) -> Mapping[str, str]:
        """The trace context the call carries instead of the trigger's (empty: unchanged)."""
        ...

    def answered(self, result: CallResult) -> None:
        """Record what the attempt got: an HTTP status, or why it got none."""
        ...


class SagaTracer(Protocol):
    """Opens the spans of saga runs and step calls."""

    def run(self, saga_id: str, saga: str, *, first_run: Mapping[str, str] | None) -> RunSpan:
        """A span for a run of ``saga_id``, a child of the current span (the trigger's).

        Args:
            saga_id: the instance.
            saga: the saga's name.
            first_run: None for a new instance; for a resumed one the trace context its first
                run recorded (empty when none was), which the new span is linked to.
        """
        ...

    def call(self, call: StepCall) -> CallSpan:
        """A span for one attempt of a step call, a child of the current run."""
        ...


class _NullRunSpan:
    __slots__ = ()

    def trace_context(self) -> dict[str, str]:
        return {}

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        yield

    def ended_as(self, status: SagaStatus) -> None:
        pass


class _NullCallSpan(contextlib.nullcontext["_NullCallSpan"]):
    def __init__(self) -> None:
        super().__init__(self)

    def headers(self) -> Mapping[str, str]:
        return {}

    def answered(self, result: CallResult) -> None:
        pass


class NullTracer:
    """A tracer whose spans do nothing (tracing is off)."""

    __slots__ = ()
    _RUN = _NullRunSpan()
    _CALL = _NullCallSpan()

    def run(self, saga_id: str, saga: str, *, first_run: Mapping[str, str] | None) -> RunSpan:
        """The shared span that does nothing."""
        return self._RUN

    def call(self, call: StepCall) -> CallSpan:
        """The shared span that does nothing and carries no headers."""
        return self._CALL


NULL_TRACER = NullTracer()


def carrying(request: StepRequest, trace: Mapping[str, str]) -> StepRequest:
    """``request`` with ``trace`` as its trace context headers, replacing any it had (in any
    case); ``request`` itself when ``trace`` is empty."""
    if not trace:
        return request
    kept = {k: v for k, v in request.headers.items() if k.lower() not in TRACE_HEADERS}
    return replace(request, headers={**kept, **trace})


def recorded_trace(started: object) -> dict[str, str]:
    """The first run's trace context a ``started`` event's detail recorded (empty: none)."""
    stored = started.get(TRACE_KEY) if isinstance(started, Mapping) else None
    if not isinstance(stored, Mapping):
        return {}
    return {str(k): str(v) for k, v in stored.items() if str(k) in TRACE_HEADERS}
