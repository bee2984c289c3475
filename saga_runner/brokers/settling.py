"""What every adapter does with one delivery: run the handler, then decide ack or redelivery.

``settle`` is the shared policy behind ``BrokerAdapter.consume`` (adapters only carry the verdict
out with their client's ack/nack): a body above ``MAX_COMPLETION_BODY`` is rejected without
calling the handler; the handler returned → ``ACK``; it raised
``UnusableMessage`` → logged without headers (the token is a secret; its value is also scrubbed
from the handler's detail), counted by reason, ``ACK``; it raised anything else → logged,
``RETRY`` (the adapter hands the delivery back after ``retry_delay``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from enum import Enum
from typing import Any

from saga_runner.brokers.base import (
    CALLBACK_TOKEN_HEADER,
    MAX_COMPLETION_BODY,
    Delivery,
    Handler,
    RejectCounter,
    RejectReason,
)
from saga_runner.errors import UnusableMessage

log = logging.getLogger("saga_sidecar.brokers")


class Verdict(Enum):
    """What the adapter does with a delivery after its handler ran."""

    ACK = "ack"
    RETRY = "retry"


async def settle(
    broker: str, handler: Handler, delivery: Delivery, on_rejected: RejectCounter
) -> Verdict:
    """Run ``handler`` on ``delivery`` and say whether to acknowledge it or have it redelivered.

    Args:
        broker: the broker's configured name, for the log lines.
        handler: the consumer's handler.
        delivery: the message taken from the broker.
        on_rejected: counts a delivery the handler rejected, by reason.
    """
    try:
        if len(delivery.body) > MAX_COMPLETION_BODY:
            raise UnusableMessage(
                RejectReason.TOO_LARGE, f"body of {len(delivery.body)} bytes, above 1MiB"
            )
        await handler(delivery)
    except UnusableMessage as exc:
        log.warning(
            "broker message rejected, acknowledged: %s",
            scrub(exc.detail or exc.reason, delivery),
            extra=_fields(broker, delivery) | {"reason": exc.reason},
        )
        on_rejected(exc.reason)
        return Verdict.ACK
    except Exception as exc:
        log.warning(
            "broker message not applied, will be delivered again: %s: %s",
            type(exc).__name__,
            scrub(str(exc), delivery),
            extra=_fields(broker, delivery),
        )
        return Verdict.RETRY
    return Verdict.ACK


def scrub(text: str, delivery: Delivery) -> str:
    """``text`` with the delivery's callback token (if any) replaced by ``***``."""
    token = delivery.headers.get(CALLBACK_TOKEN_HEADER)
    return text.replace(token, "***") if token else text


def _fields(broker: str, delivery: Delivery) -> dict[str, object]:
    return {
        "broker": broker,
        "message_id": delivery.message_id,
        "redelivered": delivery.redelivered,
    }


class InFlight:
    """The deliveries being handled by one subscription, so cancelling it can let them finish.

    ``limit`` bounds how many run at once (``acquire`` waits for a free slot).
    """

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        """Wait until fewer than ``limit`` deliveries are being handled, and take a slot."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a slot that ``start`` was not called for."""
        self._slots.release()

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Handle a delivery in a task of its own, in the slot ``acquire`` took."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("broker delivery handling failed", exc_info=task.exception())

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the deliveries being handled, cancel the rest."""
        pending = set(self._tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
