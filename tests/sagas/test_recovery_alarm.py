"""The recovery loop's sleep (``saga_runner.alarm``): until the interval, the store's next due
saga or a sooner one this process parked, whichever comes first, and never shorter than 50 ms.

Real time on the test's event loop; no store is needed (the next due time is given).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from saga_runner.alarm import MIN_SLEEP, Alarm


def now() -> datetime:
    """The wall clock, as the store's ``now``."""
    return datetime.now(UTC)


def later(seconds: float) -> datetime:
    """``seconds`` from now."""
    return now() + timedelta(seconds=seconds)


async def slept(alarm: Alarm, interval: float, next_run: datetime | None) -> float:
    """How long ``alarm.sleep`` lasted."""
    started = time.monotonic()
    await alarm.sleep(interval, next_run)
    return time.monotonic() - started


async def test_sleeps_the_interval_when_nothing_is_due_sooner() -> None:
    assert 0.28 <= await slept(Alarm(now), 0.3, later(5)) < 0.6
    assert 0.28 <= await slept(Alarm(now), 0.3, None) < 0.6


async def test_wakes_when_the_next_saga_is_due() -> None:
    assert 0.18 <= await slept(Alarm(now), 5.0, later(0.2)) < 0.5


async def test_never_sleeps_less_than_the_floor_so_an_overdue_saga_cannot_make_it_spin() -> None:
    assert MIN_SLEEP * 0.9 <= await slept(Alarm(now), 5.0, later(-1)) < 0.3


async def test_a_saga_parked_during_the_sleep_brings_the_wake_forward() -> None:
    alarm = Alarm(now)
    sleeping = asyncio.ensure_future(slept(alarm, 5.0, later(3)))
    await asyncio.sleep(0.1)
    alarm.due(later(4))  # later than the wake already set: no change
    alarm.due(later(0.2))
    alarm.due(later(1))  # later than the sooner one
    assert 0.25 <= await sleeping < 0.6


async def test_a_pass_forgets_what_was_parked_before_it_began() -> None:
    alarm = Alarm(now)
    alarm.due(later(-1))
    alarm.forget()  # the pass's claim and next-run query cover it
    assert 0.28 <= await slept(alarm, 0.3, None) < 0.6
    alarm.due(later(0.1))  # parked during the pass, before the sleep
    assert 0.08 <= await slept(alarm, 5.0, None) < 0.4
