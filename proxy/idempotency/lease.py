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

from proxy.idempotency.store import Acquired, IdempotencyStore, StoreUnavailable

log = logging.getLogger("saga_sidecar.idempotency")


class LeaseRenewer:
    """Async context manager renewing ``lock`` every ``lease / 3`` seconds until exit."""

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
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseRenewer:
        self._task = asyncio.create_task(self._run(), name="idempotency-lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                renewed = await self.store.renew(self.lock, self.lease)
            except StoreUnavailable as exc:
                log.warning("idempotency lease renewal failed: %s", exc.detail)
                if self._on_store_error is not None:
                    self._on_store_error(exc)
                continue
            if not renewed:
                self.lost = True
                log.warning("idempotency lease lost: another request took the key over")
                return
            self.renewals += 1
