"""Calls of saga steps: send one rendered request, classify what came back.

``StepCaller.call`` sends a step's action or compensation with its ``Idempotency-Key`` and a
per-call timeout over a ``StepTransport`` (``saga_runner.transport``), reads a bounded response
body (JSON when it parses), and classifies the result as ``success``, ``retryable``
(408/425/429, 5xx, connection errors, timeouts) or ``permanent`` (any other status not in the
step's success list). ``Retry-After`` is parsed for the engine.

A request with a ``publish`` address is published to that broker instead
(``saga_runner.publishing``): success once the broker took it, ``retryable`` while the broker is
down (``broker_down`` when nothing was sent: such an attempt does not use up the step's retries),
``permanent`` when the broker refused it.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from httpsemantics import worth_retrying
from saga_runner.errors import SendFailure, UnstorableJson
from saga_runner.storable import clean_text, parse_json
from saga_runner.transport import StepTransport

MAX_RESULT_BODY = 1024 * 1024
REPLAYED_HEADER = "idempotent-replayed"
"""What an idempotent service (a saga-sidecar among them) adds to an answer it replays."""


class Outcome(StrEnum):
    """How a step call ended, from the engine's point of view."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


PUBLISH_METHOD = "PUBLISH"
"""The ``method`` a published step call is recorded and traced with."""


@dataclass(frozen=True)
class PublishAddress:
    """Where a published step call goes: a configured broker and a routing key or subject."""

    broker: str
    to: str


@dataclass(frozen=True)
class StepRequest:
    """A fully rendered step call (``publish``: a message to a broker, ``url`` then names it)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    publish: PublishAddress | None = None

    def as_record(self) -> dict[str, Any]:
        """A JSON-able description of the call, for ``execute_data``/``compensate_data``."""
        record = {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "body": self.body,
        }
        if self.publish is not None:
            record["publish"] = {"broker": self.publish.broker, "to": self.publish.to}
        return record


@dataclass(frozen=True)
class CallResult:
    """What one attempt of a step call produced."""

    outcome: Outcome
    status: int | None
    headers: dict[str, str]
    body: Any
    duration: float
    error: str | None = None
    retry_after: float | None = None
    sent: bool = True
    earlier_attempt_unknown: bool = False
    """An earlier attempt of the same call may have taken effect (a timeout, a 5xx, a crash)."""
    broker_down: bool = False
    """A publish found its broker down and sent nothing: the saga waits for the broker."""

    @property
    def replayed(self) -> bool:
        """Whether the answer is one an idempotent service stored earlier for the same key."""
        return replayed(self.headers)

    def as_record(self) -> dict[str, Any]:
        """JSON-able view of the answer: ``steps.NAME.*`` in templates, and the step ``result``."""
        return {"status": self.status, "headers": self.headers, "body": self.body}


def replayed(headers: Mapping[str, object]) -> bool:
    """Whether ``headers`` (any case) say the answer is a replay: ``Idempotent-Replayed: true``."""
    return any(
        name.lower() == REPLAYED_HEADER and str(value).strip().lower() == "true"
        for name, value in headers.items()
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify(status: int, success: Collection[int] | None) -> Outcome:
    """Classify an HTTP status against a step's ``success`` list (None: any 2xx)."""
    ok = (200 <= status < 300) if success is None else status in success
    if ok:
        return Outcome.SUCCESS
    if worth_retrying(status):
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


def decode_body(raw: bytes, content_type: str) -> Any:
    """JSON when the body parses as JSON every store can keep, otherwise text.

    Undecodable bytes, NUL characters and unpaired surrogates in the text are replaced
    (``saga_runner.storable``): an answer the store refused would pause its saga forever.
    """
    if not raw:
        return None
    if "json" in content_type or raw[:1] in (b"{", b"["):
        try:
            return parse_json(raw)
        except UnstorableJson:
            pass
    return clean_text(raw.decode("utf-8", errors="replace"))


class MessagePublisher(Protocol):
    """Publishes step calls that have a ``publish`` address (``saga_runner.publishing``)."""

    async def publish(
        self, request: StepRequest, address: PublishAddress, seconds: float
    ) -> CallResult:
        """Publish ``request`` once within ``seconds``; classify as ``StepCaller.call`` does."""
        ...


class StepCaller:
    """Sends step calls over one ``StepTransport``, and publishes through the brokers."""

    def __init__(self, transport: StepTransport, publisher: MessagePublisher | None = None) -> None:
        self.transport = transport
        self.publisher = publisher

    async def call(
        self, request: StepRequest, *, success: Collection[int] | None, seconds: float
    ) -> CallResult:
        """Send ``request`` once and classify the answer; never raises for network trouble."""
        if request.publish is not None:
            if self.publisher is None:
                return no_answer(time.perf_counter(), "no broker is open here", sent=False)
            return await self.publisher.publish(request, request.publish, seconds)
        started = time.perf_counter()
        data = None if request.body is None else json.dumps(request.body).encode()
        headers = dict(request.headers)
        if data is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        try:
            answer = await self.transport.exchange(
                request.method,
                request.url,
                headers,
                data,
                seconds=seconds,
                limit=MAX_RESULT_BODY,
            )
        except SendFailure as exc:
            if exc.sent:
                return no_answer(started, f"connection error: {exc.detail}", sent=True)
            return no_answer(started, f"connection failed: {exc.detail}", sent=False)
        except TimeoutError:
            return no_answer(started, f"timed out after {seconds:g}s", sent=True)
        response_headers = answer.headers
        return CallResult(
            outcome=classify(answer.status, success),
            status=answer.status,
            headers={k.lower(): clean_text(v) for k, v in response_headers.items()},
            body=decode_body(answer.body, response_headers.get("Content-Type", "")),
            duration=time.perf_counter() - started,
            retry_after=parse_retry_after(response_headers.get("Retry-After")),
        )


def no_answer(
    started: float, error: str, *, sent: bool, outcome: Outcome = Outcome.RETRYABLE
) -> CallResult:
    """A call (started at ``perf_counter`` time ``started``) that got no answer: ``error``
    says why, ``sent`` whether it may have reached its destination."""
    return CallResult(
        outcome=outcome,
        status=None,
        headers={},
        body=None,
        duration=time.perf_counter() - started,
        error=error,
        sent=sent,
    )
