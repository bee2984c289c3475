"""Lease renewal: keeps an in-flight lock alive for as long as the upstream call runs.

``LeaseRenewer`` renews the lock every third of its lease with an owner-checked script, so a
60 s upstream call under a 5 s ``lock_timeout`` stays protected, while a crashed sidecar's lock
lapses within one lease. A failed renewal (store unreachable) is retried every
``RETRY_INTERVAL`` seconds, not at the next tick: an outage shorter than what is left of the
lease must not cost the lease. A refused renewal means another request holds the key now (this
lease lapsed, and a retry took the key over or recorded its outcome as unknown); that is
remembered and logged, and renewing stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType

from proxy.errors import StoreUnavailable
from proxy.idempotency.store import Acquired, IdempotencyStore

log = logging.getLogger("saga_sidecar.idempotency")

RETRY_INTERVAL = 0.2


class LeaseRenewer:
    """Async context manager renewing ``lock`` every ``lease / 3`` seconds until exit or ``stop``.

    A timer, not a task, waits for the next renewal: most covered requests end long before
    it is due, and cancelling a timer costs far less than starting and stopping a task.
    """

    def __init__(
        self,
        store: IdempotencyStore,
        lock: Acquired,
        lease: float,
        on_store_error: Callable[[StoreUnavailable], None] | None = None,
    ) -> None:
        self.store = store
        self.lock = lock
        self.lease = lease
        self.interval = lease / 3
        self.retry_interval = min(RETRY_INTERVAL, self.interval)
        self.lost = False
        self.renewals = 0
        self.expires_at = time.monotonic() + lease  # as far as this process knows
        self._failing_since: float | None = None
        self._on_store_error = on_store_error
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> LeaseRenewer:
        self._schedule(self.interval)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop renewing (the key was settled); idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.create_task(self._renew(), name="idempotency-lease")

    async def _renew(self) -> None:
        started = time.monotonic()
        try:
            renewed = await self.store.renew(self.lock, self.lease)
        except StoreUnavailable as exc:
            self._failed(exc)
            if not self._closed:
                self._schedule(self.retry_interval)
            return
        if not renewed:
            self.lost = True
            log.warning(
                "idempotency lease lost: another request holds the key now (this lease lapsed%s, "
                "and a retry took the key over or recorded the outcome as unknown)",
                " while the store was unreachable" if self._failing_since is not None else "",
            )
            return
        if self._failing_since is not None:
            log.warning(
                "idempotency lease renewed after the store was unreachable for %.2f s",
                started - self._failing_since,
            )
            self._failing_since = None
        self.renewals += 1
        self.expires_at = started + self.lease
        if not self._closed:
            self._schedule(self.interval)

    def _failed(self, exc: StoreUnavailable) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "idempotency lease renewal failed, store unreachable (%s): retrying every "
                "%.2f s, %.2f s of the lease left",
                exc.detail,
                self.retry_interval,
                max(0.0, self.expires_at - now),
            )
            if self._on_store_error is not None:
                self._on_store_error(exc)
