"""Holding a status request until its saga ends (``Prefer: wait=N``) without polling tightly.

``SagaWatch.watching(saga_id)`` registers a waiter before the request first reads the saga, so an
end reported after that read is never missed. Every run of this process that ends a saga
reports it (``ended``, from the engine's observer: ``proxy.sagas.service.WakingObserver``),
whatever started the run: the trigger, a callback, the recovery loop, an operator. That wakes
the saga's waiters at once; a saga finished by another replica is seen by re-reading it every
``poll_interval``: one primary-key read per waiting request per interval. ``close`` (the
listener is draining) wakes every waiter to answer what it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

from saga_runner.records import SagaInstance
from saga_runner.states import ACTIVE_SAGA_STATUSES

POLL_INTERVAL = 1.0
"""Seconds between the reads of a waited-for saga that no local run reports."""

Read = Callable[[], Awaitable[SagaInstance]]


class SagaWaiter:
    """One request's wait for one saga (see ``SagaWatch.watching``)."""

    def __init__(self, watch: SagaWatch) -> None:
        self._watch = watch
        self.woken = asyncio.Event()

    async def until_ended(self, saga: SagaInstance, read: Read, seconds: float) -> SagaInstance:
        """``saga`` read again until it is terminal or ``seconds`` pass (or the watch closes).

        Raises:
            StoreError: a read failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while saga.status in ACTIVE_SAGA_STATUSES and not self._watch.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self._watch.poll_interval)):
                    await self.woken.wait()
            self.woken.clear()  # an end reported during the read wakes the next wait at once
            saga = await read()
        return saga


class SagaWatch:
    """Wakes the status requests waiting for a saga to end."""

    def __init__(self, poll_interval: float = POLL_INTERVAL) -> None:
        self.poll_interval = poll_interval
        self.closed = False
        self._waiters: dict[str, set[SagaWaiter]] = {}

    def ended(self, saga_id: str) -> None:
        """A run of this process ended ``saga_id``: its waiters read it again now."""
        for waiter in self._waiters.get(saga_id, ()):
            waiter.woken.set()

    def close(self) -> None:
        """Wake every waiter to answer at once, and wait no more from now on."""
        self.closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.woken.set()

    def waiting(self) -> int:
        """How many sagas have waiters now."""
        return len(self._waiters)

    @contextmanager
    def watching(self, saga_id: str) -> Iterator[SagaWaiter]:
        """A waiter woken by ``ended(saga_id)`` until the block ends."""
        waiter = SagaWaiter(self)
        waiters = self._waiters.setdefault(saga_id, set())
        waiters.add(waiter)
        try:
            yield waiter
        finally:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[saga_id]
