"""Lease renewal: keeps an in-flight lock alive for as long as the upstream call runs.

``LeaseRenewer`` renews the lock every third of its lease with an owner-checked script, so a
60 s upstream call under a 5 s ``lock_timeout`` stays protected, while a crashed sidecar's lock
still expires within one lease. A failed renewal (store briefly unreachable) is retried at the
next tick; a refused one means the lease was lost, which is remembered and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from proxy.errors import StoreUnavailable
from proxy.idempotency.store import Acquired, IdempotencyStore

log = logging.getLogger("saga_sidecar.idempotency")


class LeaseRenewer:
    """Async context manager renewing ``lock`` every ``lease / 3`` seconds until exit.

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
        self.lost = False
        self.renewals = 0
        self._on_store_error = on_store_error
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> LeaseRenewer:
        self._schedule()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.create_task(self._renew(), name="idempotency-lease")

    async def _renew(self) -> None:
        try:
            renewed = await self.store.renew(self.lock, self.lease)
        except StoreUnavailable as exc:
            log.warning("idempotency lease renewal failed: %s", exc.detail)
            if self._on_store_error is not None:
                self._on_store_error(exc)
            renewed = None  # retried at the next tick
        if renewed is False:
            self.lost = True
            log.warning("idempotency lease lost: another request took the key over")
            return
        if renewed:
            self.renewals += 1
        if not self._closed:
            self._schedule()
