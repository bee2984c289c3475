"""One lease renewer per process: every saga lease the process holds, renewed in one batch.

A replica proves it is still working on a saga by renewing the saga's lease before it expires.
``LeaseRenewer`` keeps the leases of every run in this process and renews them all with one
``SagaStore.renew_many`` call every ``lease / 3`` seconds: one statement per round however many
sagas run (on PostgreSQL over a connection of its own, so it never queues behind the runs'
writes). Whoever acquires a lease ``track``s it at once; the run then registers with
``async with renewer.hold(lease):``. When the store reports a lease lost (an operator, another
replica or this one claimed the saga anew, or it was released), the body of that ``hold`` is
cancelled at once, in the middle of a step call or a backoff sleep, and ``LeaseLost`` is raised
in place of the cancellation, so the run makes no further call. The store's fenced writes stay
the hard guarantee; this only stops a run sooner.

A round that fails (store unreachable, or slower than a whole lease) is logged and retried
shortly. A run whose lease could not be renewed stops itself before the lease can expire
(self-fencing): the renewer knows, on this process's monotonic clock, when it sent the statement
that last extended each lease, so it knows a moment before which the database cannot yet
consider the lease expired; two ticks before that moment the run is cancelled with
``LeaseLost``, like a run whose lease was taken. So another replica that claims the saga after
the expiry never calls a step while this one still does. The store's fenced writes remain the
guarantee for a process frozen longer than a lease (its timers cannot fire).

The renewer runs in the event loop that runs the sagas on purpose: a lease vouches that
this loop makes progress, so a stalled or paused process must let its leases lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final

from saga_runner.errors import LeaseLost, StoreError
from saga_runner.records import Lease
from saga_runner.store import SagaStore

log = logging.getLogger("saga_sidecar.saga")

MIN_INTERVAL: Final = 0.05
"""Seconds; the shortest renewal period, whatever the lease."""


class LeaseHold:
    """One run's claim kept alive by the renewer: ``async with renewer.hold(lease):``.

    Entering registers the lease; leaving unregisters it. If the store reports the lease lost
    while the body runs, the body's task is cancelled and leaving raises ``LeaseLost`` instead
    of the ``CancelledError`` (a cancellation from elsewhere, such as shutdown, propagates as
    usual). Modelled on ``asyncio.timeout``.
    """

    def __init__(self, renewer: LeaseRenewer, lease: Lease) -> None:
        self.lease = lease
        self._renewer = renewer
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._reason: str | None = None
        self._settling = False

    @property
    def lost(self) -> bool:
        """Whether the store reported the lease lost while the body ran."""
        return self._reason is not None

    async def __aenter__(self) -> LeaseHold:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a lease can only be held inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        self._renewer._register(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._renewer._unregister(self)
        task, self._task = self._task, None
        if task is None or self._reason is None:
            return
        # Ours if no other cancellation was requested meanwhile (as asyncio.timeout decides).
        if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise LeaseLost(self._reason) from exc

    def settle(self) -> None:
        """Say that the run's next write ends it and releases the lease in the same commit.

        From then on a renewal that finds the lease gone no longer stops the run: it may be that
        very write's release. The write itself is fenced, so a lease truly taken over is still
        refused with ``LeaseLost``.
        """
        self._settling = True

    def _lose(self, reason: str) -> bool:
        """Stop the body (the store refused to renew the lease); False if it is not running."""
        if self._task is None or self._reason is not None or self._settling:
            return False
        self._reason = reason
        self._task.cancel(msg=reason)
        return True


class LeaseRenewer:
    """Renews the leases of every saga this process runs, in one store call per round.

    Start it once the store is open and stop it before the store closes (``SagaRuntime`` does
    both). Every ``interval`` (a third of the lease) a round renews all the leases. Every
    ``tick`` (a quarter of that) a short round renews the leases no round has renewed yet,
    because a lease's clock started before the statement acquiring it waited for a connection
    (on a loaded process, a large part of a short lease); a failed round is retried then too.

    Args:
        store: the saga store the leases live in.
        lease_seconds: how long each renewal extends a lease (``sagas.lease``).
    """

    def __init__(self, store: SagaStore, lease_seconds: float) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be greater than 0, got {lease_seconds!r}")
        self.store = store
        self.lease_seconds = lease_seconds
        self.interval = max(lease_seconds / 3, MIN_INTERVAL)
        self.tick = max(self.interval / 4, MIN_INTERVAL)
        self._failing_since: float | None = None
        self._warned_at = 0.0
        self._holds: dict[LeaseHold, None] = {}
        # Acquired, not held by a run yet: lease -> (loop time) when to stop renewing it.
        self._pending: dict[Lease, float] = {}
        # Tracked or held, and not renewed by any round yet.
        self._fresh: set[Lease] = set()
        # Lease -> (loop time) before which the database cannot consider it expired: when the
        # statement that last extended it was sent, plus the lease.
        self._valid_until: dict[Lease, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._fencer: asyncio.Task[None] | None = None

    @property
    def leases(self) -> frozenset[Lease]:
        """The leases this renewer keeps: held by runs, or tracked until a run holds them."""
        return frozenset(hold.lease for hold in self._holds).union(self._pending)

    def track(self, lease: Lease, *, sent_at: float | None = None) -> None:
        """Renew ``lease`` from now on, until a run holds it (``hold``).

        Call it as soon as a lease is acquired, so the lease does not lapse in the time it
        takes to start the run (seconds on a loaded machine). A lease no run holds within two
        lease periods is dropped and lapses, so a run that never starts cannot pin its saga.

        Args:
            lease: the lease just acquired.
            sent_at: the loop time (``loop.time()``) when the statement that acquired it was
                sent; the lease is trusted for ``lease_seconds`` from then. Default: now.
        """
        now = asyncio.get_running_loop().time()
        self._pending[lease] = now + 2 * self.lease_seconds
        self._valid_until[lease] = (now if sent_at is None else sent_at) + self.lease_seconds
        self._fresh.add(lease)

    def hold(self, lease: Lease) -> LeaseHold:
        """Keep ``lease`` renewed while the ``async with`` body runs (see ``LeaseHold``)."""
        return LeaseHold(self, lease)

    def start(self) -> None:
        """Start renewing in the background (a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="saga-lease-renewer")
            self._fencer = asyncio.create_task(self._fence_loop(), name="saga-lease-fencer")

    async def stop(self) -> None:
        """Stop renewing; the leases still held then expire unless their runs release them."""
        tasks = [task for task in (self._task, self._fencer) if task is not None]
        self._task = self._fencer = None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew_once(self) -> frozenset[Lease]:
        """A full round: renew every lease in one store call; stop the runs that lost theirs.

        Returns:
            the leases the store reported lost.

        Raises:
            StoreError: the store failed; nothing was stopped.
        """
        self._forget_unheld()
        return await self._renew(list(self.leases))

    async def _renew_fresh(self) -> frozenset[Lease]:
        self._forget_unheld()
        return await self._renew(list(self._fresh))

    async def _renew(self, leases: list[Lease]) -> frozenset[Lease]:
        if not leases:
            return frozenset()
        sent_at = asyncio.get_running_loop().time()
        lost = await self.store.renew_many(leases, self.lease_seconds)
        self._fresh.difference_update(leases)
        for lease in leases:
            if lease not in lost:
                self._valid_until[lease] = sent_at + self.lease_seconds
        for lease in lost:
            if self._pending.pop(lease, None) is not None:
                _log_lost(lease, "before its run started")
        for hold in list(self._holds):
            if hold.lease in lost and hold._lose(
                f"saga {hold.lease.saga_id}: lease {hold.lease.version} of "
                f"{hold.lease.owner!r} is stale: the store refused to renew it "
                "(claimed anew, released or deleted)"
            ):
                _log_lost(hold.lease, "stopping its run")
        return lost

    def _forget_unheld(self) -> None:
        now = asyncio.get_running_loop().time()
        for lease, deadline in list(self._pending.items()):
            if deadline <= now:
                del self._pending[lease]
                self._fresh.discard(lease)
                self._valid_until.pop(lease, None)

    def _fence_expiring(self) -> None:
        """Stop the runs whose lease may expire within two ticks (it could not be renewed)."""
        horizon = asyncio.get_running_loop().time() + 2 * self.tick
        for hold in list(self._holds):
            valid_until = self._valid_until.get(hold.lease)
            if (
                valid_until is not None
                and valid_until <= horizon
                and hold._lose(
                    f"saga {hold.lease.saga_id}: lease {hold.lease.version} could not be renewed "
                    f"in time and may expire: the run stops before another replica may claim it"
                )
            ):
                _log_lost(hold.lease, "not renewed in time, stopping its run")

    def _register(self, hold: LeaseHold) -> None:
        if self._pending.pop(hold.lease, None) is None:
            self._fresh.add(hold.lease)  # acquired without ``track``: renew it soon
            now = asyncio.get_running_loop().time()
            self._valid_until.setdefault(hold.lease, now + self.lease_seconds)
        self._holds[hold] = None

    def _unregister(self, hold: LeaseHold) -> None:
        self._holds.pop(hold, None)
        self._fresh.discard(hold.lease)
        if hold.lease not in self._pending:
            self._valid_until.pop(hold.lease, None)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        full_due = loop.time() + self.interval
        while True:
            await asyncio.sleep(min(self.tick, max(full_due - loop.time(), 0.0)))
            if loop.time() >= full_due:
                renewed = await self._round(self.renew_once)
                full_due = loop.time() + (self.interval if renewed else self.tick)
            elif self._fresh:
                await self._round(self._renew_fresh)

    async def _fence_loop(self) -> None:
        # Apart from the renewal loop, so a renewal round stuck on a slow store cannot delay it.
        while True:
            await asyncio.sleep(self.tick)
            self._fence_expiring()

    async def _round(self, renew: Callable[[], Awaitable[frozenset[Lease]]]) -> bool:
        """Run one round; log (without raising) why it failed, and return whether it worked."""
        try:
            # A renewal slower than the lease is worthless: give up and start afresh.
            async with asyncio.timeout(self.lease_seconds):
                await renew()
        except StoreError as exc:
            self._failed(str(exc))
        except TimeoutError:
            self._failed(f"no answer within the lease ({self.lease_seconds:g}s)")
        except Exception:
            log.exception("renewing saga leases failed unexpectedly")
            self._failed("unexpected error")
        else:
            if self._failing_since is not None:
                log.info("saga lease renewals work again", extra={"event": "lease_renewal_ok"})
                self._failing_since = None
            return True
        return False

    def _failed(self, why: str) -> None:
        # Retried every tick; said at most once per lease period, not twelve times.
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._warned_at >= self.lease_seconds:
            self._warned_at = now
            log.warning(
                "renewing %d saga leases failed for %.1fs, retrying every %.2fs: %s",
                len(self.leases),
                now - self._failing_since,
                self.tick,
                why,
                extra={"event": "lease_renewal_failed"},
            )


def _log_lost(lease: Lease, consequence: str) -> None:
    log.info(
        "lease on saga %s lost, %s",
        lease.saga_id,
        consequence,
        extra={"saga_id": lease.saga_id, "event": "lease_renewal_refused"},
    )
