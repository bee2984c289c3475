"""Step calls that publish a message to a broker (``publish:`` actions and compensations).

``BrokerPublisher`` is the ``MessagePublisher`` the ``StepCaller`` hands requests with a
``publish`` address to. One attempt publishes one persistent message: the body is the rendered
JSON (absent: empty), the headers are the call's (names lower-cased: ``idempotency-key``,
``saga-id``, trace context, and for an awaiting step ``saga-callback`` and
``saga-callback-token``), and the message id is the call's ``Idempotency-Key``
(``<saga id>:<step>:action``), so the copy a retry or a resumed run sends again is deduplicated
where the broker can (NATS JetStream within its duplicate window; RabbitMQ consumers see the
same ``message_id``).

How an attempt ends: the broker took it → ``success``, status ``202`` and the receipt
(``message_id``, ``duplicate``) as body; the broker is down and nothing was sent
→ ``retryable`` with ``broker_down`` (the attempt loop waits for the broker without using up
the step's retries; its recorded error begins with ``BROKER_DOWN``, so a run resumed after a
crash counts those attempts the same way, ``broker_down_attempts``); the broker may have taken
it but did not confirm in time → ``retryable`` and its outcome is unknown (a compensation follows
if the step fails); the broker refused it (no queue bound, no stream for the subject, a nack) →
``permanent``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from saga_runner.brokers.base import BrokerAdapter
from saga_runner.caller import CallResult, Outcome, PublishAddress, StepRequest, no_answer
from saga_runner.errors import BrokerUnavailable, PublishRefused
from saga_runner.records import StepAttempt
from saga_runner.states import AttemptKind

_KEY_HEADER = "idempotency-key"
ACCEPTED = 202
"""The status a published message's attempt records once the broker took it (``Accepted``),
so ``steps.NAME.status`` and the records read alike for every step that succeeded."""

BROKER_DOWN: Final = "broker unavailable: "
"""How the error of an attempt that found its broker down, and sent nothing, begins."""


class BrokerPublisher:
    """Publishes step calls through the configured brokers (by name)."""

    def __init__(self, brokers: Mapping[str, BrokerAdapter]) -> None:
        self.brokers = brokers

    async def publish(
        self, request: StepRequest, address: PublishAddress, seconds: float
    ) -> CallResult:
        """Publish ``request`` once to ``address`` within ``seconds`` (see the module docstring)."""
        started = time.perf_counter()
        broker = self.brokers.get(address.broker)
        if broker is None:
            return no_answer(started, f"broker {address.broker!r} is not configured", sent=False)
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = b"" if request.body is None else json.dumps(request.body).encode()
        if body:
            headers.setdefault("content-type", "application/json")
        message_id = headers.get(_KEY_HEADER, "")
        try:
            async with asyncio.timeout(seconds):
                receipt = await broker.publish(address.to, body, headers, message_id)
        except BrokerUnavailable as exc:
            if exc.sent:
                return no_answer(started, f"not confirmed by the broker: {exc}", sent=True)
            return replace(no_answer(started, f"{BROKER_DOWN}{exc}", sent=False), broker_down=True)
        except PublishRefused as exc:
            return no_answer(
                started, f"broker refused: {exc}", sent=False, outcome=Outcome.PERMANENT
            )
        except TimeoutError:
            return no_answer(started, f"not confirmed by the broker in {seconds:g}s", sent=True)
        body_record = {"message_id": message_id, "duplicate": receipt.duplicate}
        return CallResult(
            Outcome.SUCCESS, ACCEPTED, {}, body_record, duration=time.perf_counter() - started
        )


def broker_down_attempts(
    made: Iterable[StepAttempt], step_order: int, kind: AttemptKind, before: int
) -> int:
    """How many of the recorded attempts of ``kind`` at step ``step_order`` that came before
    attempt number ``before`` of its current round (the rows since its last attempt numbered 1)
    found the broker down: attempts that used up none of its retries."""
    count = 0
    for attempt in made:
        if attempt.step_order == step_order and attempt.kind is kind:
            count = 0 if attempt.attempt == 1 else count
            count += (attempt.error or "").startswith(BROKER_DOWN)
    # Without rows of its own yet (its first attempt cut off), a round would count the last one's.
    return min(count, before - 1)
