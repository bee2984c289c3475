"""When the recovery loop looks for due sagas next: after its interval, or sooner.

A pass of the loop ends by asking the store when the next parked saga is due (one indexed
query, ``SagaStore.next_run``), and the loop sleeps until then if that is sooner than
``sagas.recovery_interval``. A run of this process that parks a saga during the pass or the sleep
tells the ``Alarm`` (``due``), which brings the wake forward when that saga is due sooner, so a
poll due every 300 ms is made every 300 ms, whatever the interval. A sleep lasts at least
``MIN_SLEEP`` (or the interval, if shorter), so a saga due but not claimable cannot make the
loop spin. No timer is kept per saga: one wake time per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

MIN_SLEEP: Final = 0.05
"""The shortest sleep between two passes of the recovery loop, in seconds."""


class Alarm:
    """The recovery loop's wake time, which parked sagas of this process bring forward."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        """Args:
        clock: "now", the clock ``next_run_at`` is written by (``SagaStore.now``).
        """
        self._clock = clock
        self._soonest: datetime | None = None
        self._rung = asyncio.Event()

    def due(self, at: datetime) -> None:
        """A saga this process parked is due at ``at``: wake the loop then at the latest."""
        if self._soonest is None or at < self._soonest:
            self._soonest = at
            self._rung.set()

    def forget(self) -> None:
        """A pass begins: what it claims and asks the store covers every saga parked before."""
        self._soonest = None

    async def sleep(self, interval: float, next_run: datetime | None) -> None:
        """Sleep ``interval`` seconds, or until ``next_run`` (the store's next due saga) or a
        sooner ``due`` if earlier; at least ``MIN_SLEEP`` (or ``interval`` if shorter)."""
        floor = min(MIN_SLEEP, interval)
        until = self._clock() + timedelta(seconds=interval)
        if next_run is not None:
            until = min(until, next_run)
        while True:
            self._rung.clear()
            wake = until if self._soonest is None else min(until, self._soonest)
            seconds = max((wake - self._clock()).total_seconds(), floor)
            try:
                async with asyncio.timeout(seconds):
                    await self._rung.wait()
            except TimeoutError:
                return
