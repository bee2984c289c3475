"""The recovery loop every replica runs: resume sagas nobody is working on, prune old ones.

Each tick (pass) claims (atomically, so two replicas never get the same saga) the ``running`` and
``compensating`` instances whose lease expired or whose persisted ``next_run_at`` is due, and
resumes each under the definition it is pinned to; when the claim supersedes a run of this very
worker (its own lease expired), that stale run is cancelled first. An instance whose definition
is known neither to this replica nor to the store is marked ``failed`` with the reason, for an
operator. A saga whose waiting step's outcome was just recorded is claimed and resumed here at
once (``continue_now``); a parked saga's wait ends by the same tick that resumes every due
saga (its ``next_run_at`` is the wait's end), so however many sagas wait, a tick makes the same
few statements. After its claim, a tick asks when the next parked saga is due (one more indexed
query), and the loop sleeps until then if that is sooner than ``interval`` (``saga_runner.alarm``;
a saga parked by this process meanwhile wakes it sooner still), so a poll or an await's end is
acted on at its own time, not at the next interval. Finished sagas older than the retention
period are deleted in bounded batches, by one replica at a time on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from saga_runner.errors import LeaseLost, SagaError, StoreError
from saga_runner.records import Claim
from saga_runner.runtime import SagaRuntime
from saga_runner.states import SagaStatus
from saga_runner.store import WriteBatch
from yamlconfig.errors import ConfigError

log = logging.getLogger("saga_sidecar.recovery")


@dataclass(frozen=True)
class RecoverySettings:
    """How often to look for work, how much to take at once, how long to keep finished sagas.

    Retention deletes at most ``retention_batch`` instances per statement and at most
    ``retention_max_batches`` statements per tick, so a large backlog never holds locks long.
    """

    interval: float
    lease_seconds: float
    retention_seconds: float
    max_concurrent: int = 50
    retention_batch: int = 500
    retention_max_batches: int = 20


class RecoveryWorker:
    """Claims and resumes due sagas on a timer; one per process."""

    def __init__(
        self,
        runtime: SagaRuntime,
        settings: RecoverySettings,
        report_oldest_age: Callable[[float], None] | None = None,
        report_waiting: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.report_oldest_age = report_oldest_age
        self.report_waiting = report_waiting
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._next_run: datetime | None = None

    @property
    def owner(self) -> str:
        """This replica's id (the owner written on claimed sagas)."""
        return self.runtime.engine.settings.owner

    @property
    def active(self) -> frozenset[str]:
        """The ids of the sagas this worker is resuming right now."""
        return frozenset(self._running)

    def start(self) -> None:
        """Start the loop in the background."""
        self._loop_task = asyncio.create_task(self._loop(), name="saga-recovery")

    async def stop(self, grace: float) -> None:
        """Stop claiming; give resumed sagas ``grace`` seconds, then cancel them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("recovery tick failed: %s", exc)
            except Exception:
                log.exception("recovery tick failed unexpectedly")
            await self.runtime.engine.alarm.sleep(self.settings.interval, self._next_run)

    async def tick(self) -> list[str]:
        """One round: claim due sagas and start resuming them; find when the next is due
        (unless the claim took all the room left: the next round is then an ``interval`` away);
        prune; report the oldest age.

        Returns:
            the ids of the sagas claimed in this round.
        """
        self._next_run = None
        self.runtime.engine.alarm.forget()
        room = self.settings.max_concurrent - len(self._running)
        sent_at = asyncio.get_running_loop().time()
        claims = (
            await self.runtime.store.claim_due(self.owner, self.settings.lease_seconds, room)
            if room > 0
            else []
        )
        for claim in claims:
            self._start(claim, sent_at)
        if len(claims) < room:
            self._next_run = await self.runtime.store.next_run()
        await self.prune()
        await self._report_oldest()
        if self.report_waiting is not None:
            self.report_waiting(await self.runtime.store.waiting_counts())
        return [claim.saga.id for claim in claims]

    async def continue_now(self, saga_id: str) -> bool:
        """Claim ``saga_id`` unless someone holds it, and resume it here in the background
        (its waiting step just got its outcome); return whether it was claimed."""
        sent_at = asyncio.get_running_loop().time()
        claim = await self.runtime.store.claim_one(saga_id, self.owner, self.settings.lease_seconds)
        if claim is None:
            return False
        self._start(claim, sent_at)
        return True

    def _start(self, claim: Claim, sent_at: float) -> None:
        self.runtime.leases.track(claim.lease, sent_at=sent_at)
        stale = self._running.get(claim.saga.id)
        task = asyncio.create_task(
            self._resume_after(stale, claim), name=f"saga-resume-{claim.saga.id}"
        )
        self._running[claim.saga.id] = task
        task.add_done_callback(self._forget(claim.saga.id))

    def _forget(self, saga_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            if self._running.get(saga_id) is task:  # not the run that superseded it
                self._running.pop(saga_id)

        return forget

    async def _resume_after(self, stale: asyncio.Task[None] | None, claim: Claim) -> None:
        # ``stale`` is this worker's own earlier run of the saga, whose lease expired (its
        # renewals were starved) and was just claimed anew: its lease is fenced off already, so
        # stop it before resuming, and one process never drives a saga twice at once.
        if stale is not None:
            stale.cancel()
            await asyncio.gather(stale, return_exceptions=True)
        await self.resume(claim)

    async def resume(self, claim: Claim) -> None:
        """Drive one claimed saga to its end; never raises."""
        saga = claim.saga
        log.info(
            "resuming saga %s (%s)",
            saga.id,
            saga.status.value,
            extra={"saga_id": saga.id, "saga": saga.business_type, "event": "resume"},
        )
        try:
            definition = await self.runtime.definition_for(saga.definition_hash)
        except StoreError as exc:
            log.warning("saga %s not resumed, store failed: %s", saga.id, exc)
            return
        except ConfigError as exc:
            reason = f"the stored snapshot of definition {saga.definition_hash[:12]} is invalid"
            await self._fail_without_definition(claim, f"{reason}: {exc}")
            return
        except SagaError as exc:
            await self._fail_without_definition(claim, str(exc))
            return
        try:
            await self.runtime.engine.execute(definition, claim.lease)
        except LeaseLost:
            log.info("saga %s was taken over by another replica", saga.id)
        except StoreError as exc:
            log.warning("saga %s paused, store failed: %s", saga.id, exc)
        except Exception:
            log.exception("saga %s failed unexpectedly while resuming", saga.id)

    async def _fail_without_definition(self, claim: Claim, reason: str) -> None:
        message = f"cannot resume: {reason}"
        try:
            failed = WriteBatch(
                saga_status=SagaStatus.FAILED,
                saga_columns={"failure_reason": message, "next_run_at": None},
            )
            await self.runtime.store.write(claim.lease, failed)
            await self.runtime.store.record_event(
                claim.saga.id, self.owner, "failed", {"reason": message}
            )
            await self.runtime.store.release(claim.lease)
        except StoreError as exc:
            log.warning("could not mark saga %s failed: %s", claim.saga.id, exc)
            return
        age = (datetime.now(UTC) - claim.saga.created_at).total_seconds()
        self.runtime.engine.observer.saga_finished(
            claim.saga.business_type, SagaStatus.FAILED, max(age, 0.0), saga_id=claim.saga.id
        )
        log.error(
            "saga %s %s",
            claim.saga.id,
            message,
            extra={"saga_id": claim.saga.id, "saga": claim.saga.business_type, "event": "failed"},
        )

    async def prune(self) -> int:
        """Delete finished sagas older than the retention period, in bounded batches."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.retention_seconds)
        batch = self.settings.retention_batch
        deleted = 0
        for _ in range(self.settings.retention_max_batches):
            count = await self.runtime.store.delete_finished_before(cutoff, batch)
            deleted += count
            if count < batch:
                break
        if deleted:
            log.info("retention deleted %d finished sagas", deleted, extra={"deleted": deleted})
        return deleted

    async def _report_oldest(self) -> None:
        if self.report_oldest_age is None:
            return
        oldest = await self.runtime.store.oldest_unfinished_created_at()
        age = 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        self.report_oldest_age(max(age, 0.0))
