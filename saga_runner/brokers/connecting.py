"""Connection state shared by the adapters: what ``ready`` reports, and the first connect.

A ``Link`` records whether an adapter's connection is up and, when it is not, why; ``ready``
raises ``BrokerUnavailable`` with that reason, so ``/readyz`` names the broker. ``connect_until_up``
makes the first connection, retrying with capped exponential backoff (full jitter) until it
succeeds: a broker that is down at start stops nothing else. After that the client library
reconnects by itself (aio-pika's robust connection, nats-py's reconnect loop) and tells the
``Link``. ``keep_trying`` is the same retry loop for any other step (declaring a queue,
subscribing a consumer).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from saga_runner.errors import BrokerUnavailable
from saga_runner.retry import RetryPolicy

log = logging.getLogger("saga_sidecar.brokers")

NOT_YET = "not connected yet"
CLOSED = "closed"
RECONNECT = RetryPolicy(attempts=1, backoff=0.1, multiplier=2.0, max_backoff=5.0)
_RECANCEL = 0.1  # seconds between two cancels of a task that did not end (``stop``)
"""The waits between attempts of ``keep_trying``: up to 0.1 s, doubling, never above 5 s."""


class Link:
    """Whether one broker connection is up, and why not when it is down."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.problem: str | None = NOT_YET
        self.up = asyncio.Event()

    def connected(self) -> None:
        """The connection is (again) usable."""
        if self.problem == CLOSED:
            return
        if self.problem is not None and self.problem != NOT_YET:
            log.info("broker %s connected", self.broker, extra={"broker": self.broker})
        self.problem = None
        self.up.set()

    def down(self, why: str) -> None:
        """The connection is down or cannot be made (the client is retrying), because ``why``
        (no secrets in it); logged when the reason changes."""
        if self.problem == CLOSED:
            return
        if why != self.problem:
            log.warning("broker %s: %s", self.broker, why, extra={"broker": self.broker})
        self.problem = why
        self.up.clear()

    def closed(self) -> None:
        """The adapter is being closed on purpose: from now on it stays down, unlogged."""
        self.problem = CLOSED
        self.up.clear()

    def check(self) -> None:
        """Return when up.

        Raises:
            BrokerUnavailable: the connection is down, with the reason.
        """
        if self.problem is not None:
            raise BrokerUnavailable(self.broker, self.problem)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong (the exception's message, else its type)."""
    return str(exc) or type(exc).__name__


async def keep_trying(
    attempt: Callable[[], Awaitable[None]],
    on_failure: Callable[[Exception], None],
    *,
    rng: random.Random | None = None,
) -> None:
    """Call ``attempt`` until it returns, telling ``on_failure`` of each failure and waiting
    ``RECONNECT`` before the next try.

    Args:
        attempt: does the work (connect, declare and consume...), or raises.
        on_failure: records or logs why an attempt failed (no secrets).
        rng: the jitter's source (injectable in tests).
    """
    rng = rng or random.Random()
    failures = 0
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            failures += 1
            on_failure(exc)
            await asyncio.sleep(RECONNECT.delay(failures, rng))


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it ended, cancelling it again while it goes on.

    A client library may turn a cancellation into an error of its own (nats-py's ``next_msg``
    raises ``ConnectionClosedError`` once its connection is closed), which ``keep_trying``
    then takes for a failure to retry: one ``cancel`` would leave the task running for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL)
    if not task.cancelled():
        task.exception()  # retrieved: its end is the point, not its error


async def connect_until_up(link: Link, attempt: Callable[[], Awaitable[None]]) -> None:
    """Make the first connection (``attempt``), retrying with ``RECONNECT``; ``link`` says why
    the broker is not up meanwhile (``attempt``'s errors must not carry the URL's password)."""
    await keep_trying(attempt, lambda exc: link.down(f"cannot connect: {describe(exc)}"))


def consumer_failed(broker: str, callbacks: str, exc: Exception) -> None:
    """Log why consuming ``callbacks`` could not start (or stopped); it is tried again."""
    log.warning(
        "broker %s: cannot consume %r yet: %s",
        broker,
        callbacks,
        describe(exc),
        extra={"broker": broker},
    )
