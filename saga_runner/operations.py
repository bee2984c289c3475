"""Operator actions on sagas, shared by the admin API, the dashboard and ``saga-sidecar sagas``.

``SagaOperations`` lists and shows sagas and prepares the two actions that change one:

- **retry**: resume a ``failed`` saga's compensation (``failed -> compensating``), or resume a
  ``running`` / ``compensating`` saga that is stuck: its lease expired (or is absent), or the
  operator forces it, taking the saga from a live holder (whose next write is then refused).
  A compensation whose last answer was replayed by its service gets a new key generation, so
  the service executes it again instead of replaying the stored failure.
- **abort**: compensate a ``running`` saga now: claim it with force, move it to ``compensating``
  with the failure reason ``aborted by <actor>``; the replica that was running it stops at its
  next write, and the in-flight step (outcome unknown) is compensated too. When this process
  runs the saga and a parallel group of it is in flight, the abort is handed to that run
  instead: no member starts another attempt, the calls in flight finish and their outcomes are
  recorded, then the run compensates (``SagaEngine.abort_here``). A TCC saga is
  cancelled the same way, but only until it has decided to confirm: once its confirms have
  started it can no longer be cancelled, and an abort is refused.

A TCC saga that ended ``failed`` because a confirm ran out of attempts is retried by confirming
again (``failed -> running``), never by cancelling.

Both claim the saga for this replica and record an event (actor, time, what) before anything
else happens, and return an ``OperatorRun`` whose ``run()`` drives the saga to its end with the
engine. The admin API answers ``202`` and runs it in the background; the CLI runs it in the
foreground. A refused action changes nothing and raises ``OperationRefused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from saga_runner.definition import SagaDefinition
from saga_runner.engine import SagaEngine
from saga_runner.errors import (
    LeaseLost,
    OperationRefused,
    OperatorInputError,
    SagaError,
    StoreError,
)
from saga_runner.records import (
    Claim,
    JsonValue,
    Lease,
    PageCursor,
    SagaDetail,
    SagaInstance,
    SagaPage,
)
from saga_runner.runs import Run, compensation_replayed
from saga_runner.runtime import SagaRuntime
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import MAX_PAGE_SIZE, SagaStore, StepChange, WriteBatch
from saga_runner.views import OutputRedactor
from yamlconfig.errors import ConfigError

log = logging.getLogger("saga_sidecar.operations")

DEFAULT_LIMIT: Final = 50
MAX_ACTOR_LENGTH: Final = 100
MAX_REASON_LENGTH: Final = 1000
RETRYABLE: Final = frozenset({SagaStatus.FAILED, SagaStatus.RUNNING, SagaStatus.COMPENSATING})
ABORTABLE: Final = frozenset({SagaStatus.RUNNING})
RULES: Final = {"retry": (RETRYABLE, "retried"), "abort": (ABORTABLE, "aborted")}
"""Per action: the statuses it applies to, and its past participle for refusals."""


@dataclass(frozen=True)
class ListQuery:
    """Filters and paging of the newest-first saga list (``None``: any)."""

    status: SagaStatus | None = None
    name: str | None = None
    business_id: str | None = None
    limit: int = DEFAULT_LIMIT
    before: PageCursor | None = None

    @classmethod
    def parse(
        cls,
        *,
        status: str | None = None,
        name: str | None = None,
        business_id: str | None = None,
        limit: str | int | None = None,
        before: str | None = None,
    ) -> ListQuery:
        """Build a query from text (a query string or command line); empty text means "any".

        Raises:
            OperatorInputError: an unknown status, a limit outside 1..1000, a bad cursor.
        """
        return cls(
            status=_status(status),
            name=name or None,
            business_id=business_id or None,
            limit=_limit(limit),
            before=_cursor(before),
        )


def _status(text: str | None) -> SagaStatus | None:
    if not text:
        return None
    try:
        return SagaStatus(text)
    except ValueError:
        known = ", ".join(s.value for s in SagaStatus)
        raise OperatorInputError(f"unknown status {text!r}: expected one of {known}") from None


def _limit(value: str | int | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise OperatorInputError(f"limit must be a whole number, got {value!r}") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise OperatorInputError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def _cursor(text: str | None) -> PageCursor | None:
    if not text:
        return None
    try:
        return PageCursor.decode(text)
    except ValueError:
        raise OperatorInputError(f"invalid cursor {text!r}: pass a next_cursor value") from None


def clean_actor(text: str) -> str:
    """Validate who is acting (recorded on events and in ``aborted by <actor>``).

    Raises:
        OperatorInputError: empty, longer than 100 characters, or holding control characters.
    """
    actor = text.strip()
    if not actor or len(actor) > MAX_ACTOR_LENGTH or not actor.isprintable():
        raise OperatorInputError(
            f"actor must be 1 to {MAX_ACTOR_LENGTH} printable characters, got {text!r}"
        )
    return actor


def clean_reason(text: str | None) -> str | None:
    """Validate an operator's optional note; ``None`` or blank means none.

    Raises:
        OperatorInputError: longer than 1000 characters.
    """
    if text is None or not text.strip():
        return None
    if len(text) > MAX_REASON_LENGTH:
        raise OperatorInputError(f"reason must be at most {MAX_REASON_LENGTH} characters")
    return text.strip()


@dataclass(frozen=True)
class OperatorRun:
    """A claimed retry or abort: the saga as the action left it, and how to finish it.

    Attributes:
        action: ``retry`` or ``abort``.
        actor: who asked for it.
        saga: the instance right after the action was recorded.
    """

    action: str
    actor: str
    saga: SagaInstance
    definition: SagaDefinition
    lease: Lease
    engine: SagaEngine
    local: Run | None = None
    """The run of this process the action was handed to (an abort of a group in flight)."""

    async def run(self) -> SagaInstance:
        """Drive the saga to a terminal state and record how it ended.

        Returns:
            the instance as the run left it (as read back, if another replica took it over).

        Raises:
            StoreError: the store failed; the saga is resumed by recovery later.
        """
        store = self.engine.store
        try:
            if self.local is not None:
                await self.local.finished.wait()
                final = await store.get_instance(self.saga.id)
            else:
                final = await self.engine.execute(self.definition, self.lease)
        except LeaseLost:
            log.info("saga %s was taken over during the operator %s", self.saga.id, self.action)
            return await store.get_instance(self.saga.id)
        await store.record_event(
            self.saga.id, self.actor, f"{self.action}_finished", {"status": final.status.value}
        )
        return final

    async def abandon(self) -> None:
        """Give the saga back without running it; recovery resumes it when it is active."""
        if self.local is not None:
            return  # the run it was handed to goes on
        with contextlib.suppress(StoreError):
            await self.engine.store.release(self.lease)


class SagaOperations:
    """What an operator may read and do, over one open ``SagaRuntime``."""

    def __init__(self, runtime: SagaRuntime) -> None:
        self.runtime = runtime
        self.redact = OutputRedactor(runtime.engine.redactor)

    @property
    def store(self) -> SagaStore:
        """The runtime's saga store."""
        return self.runtime.store

    async def list(self, query: ListQuery) -> SagaPage:
        """One page of sagas, newest first."""
        return await self.store.list_sagas(
            status=query.status,
            name=query.name,
            business_id=query.business_id,
            limit=query.limit,
            before=query.before,
        )

    async def counts(self) -> dict[SagaStatus, int]:
        """How many sagas are in each status."""
        return await self.store.counts_by_status()

    async def show(self, saga_id: str) -> SagaDetail:
        """A saga with its steps, attempts and events; ``SagaNotFound`` if absent."""
        return await self.store.get(saga_id)

    async def retry(
        self, saga_id: str, actor: str, *, force: bool = False, reason: str | None = None
    ) -> OperatorRun:
        """Claim a ``failed`` or stuck saga so its run can resume.

        Args:
            saga_id: the saga.
            actor: who asks (``cli:alice``, ``admin-api:10.0.0.7``).
            force: take the saga even from a replica whose lease is still live.
            reason: an optional note kept on the event.

        Raises:
            SagaNotFound: no such saga.
            OperationRefused: it is finished, or live and held by a replica (without ``force``).
        """
        saga = await self._expect(saga_id, "retry")
        if not force and _held(saga, self.store.now()):
            raise _held_refusal(saga)
        definition = await self._definition(saga)
        sent_at = asyncio.get_running_loop().time()
        claim = await self.store.claim_one(saga_id, self._owner, self._lease_seconds, force=force)
        if claim is None:
            raise _held_refusal(await self.store.get_instance(saga_id))
        self.runtime.leases.track(claim.lease, sent_at=sent_at)
        return await self._prepare(
            claim, "retry", actor, definition, holder=saga.owner, force=force, reason=reason
        )

    async def abort(self, saga_id: str, actor: str, *, reason: str | None = None) -> OperatorRun:
        """Take a ``running`` saga from whoever runs it and turn it to compensation.

        Args:
            saga_id: the saga.
            actor: who asks; recorded, and named in the failure reason.
            reason: an optional note kept on the event.

        Raises:
            SagaNotFound: no such saga.
            OperationRefused: it is not ``running``.
        """
        saga = await self._expect(saga_id, "abort")
        await self._not_confirming(saga)
        local = self.runtime.engine.abort_here(saga_id, f"aborted by {actor}")
        if local is not None:
            return await self._handed_over(local, actor, reason)
        definition = await self._definition(saga)
        sent_at = asyncio.get_running_loop().time()
        claim = await self.store.claim_one(saga_id, self._owner, self._lease_seconds, force=True)
        if claim is None:
            raise StoreError(f"saga {saga_id}: a forced claim was refused")
        self.runtime.leases.track(claim.lease, sent_at=sent_at)
        return await self._prepare(
            claim, "abort", actor, definition, holder=saga.owner, force=True, reason=reason
        )

    async def _handed_over(self, run: Run, actor: str, reason: str | None) -> OperatorRun:
        """Record an abort handed to this process's run of the saga."""
        detail: dict[str, JsonValue] = {
            "previous_status": run.saga.status.value,
            "status": run.saga.status.value,
            "previous_owner": run.lease.owner,
            "force": False,
            "replica": self._owner,
            "in_flight": "left to finish, then compensated",
        }
        if reason:
            detail["reason"] = reason
        await self.store.record_event(run.saga.id, actor, "abort", detail)
        log.info(
            "operator abort of saga %s by %s, handed to its run",
            run.saga.id,
            actor,
            extra={"saga_id": run.saga.id, "saga": run.saga.name, "event": "abort", "actor": actor},
        )
        engine = self.runtime.engine
        return OperatorRun("abort", actor, run.saga, run.definition, run.lease, engine, run)

    @property
    def _owner(self) -> str:
        return self.runtime.engine.settings.owner

    @property
    def _lease_seconds(self) -> float:
        return self.runtime.engine.settings.lease_seconds

    async def _not_confirming(self, saga: SagaInstance) -> None:
        """Refuse to abort a TCC saga that decided to confirm (a cancel would undo a confirm)."""
        if await self._confirming(saga.id):
            raise OperationRefused(
                saga.id,
                saga.status.value,
                f"saga {saga.id} is confirming its TCC steps; a confirmed step cannot be "
                "cancelled, so it cannot be aborted",
            )

    async def _confirming(self, saga_id: str) -> bool:
        detail = await self.store.get(saga_id)
        return any(step.phase is AttemptKind.CONFIRM for step in detail.steps)

    async def _expect(self, saga_id: str, action: str) -> SagaInstance:
        allowed, verb = RULES[action]
        saga = await self.store.get_instance(saga_id)
        if saga.status not in allowed:
            raise OperationRefused(saga_id, saga.status.value, _refusal(saga, allowed, verb))
        return saga

    async def _definition(self, saga: SagaInstance) -> SagaDefinition:
        try:
            return await self.runtime.definition_for(saga.definition_hash)
        except StoreError:
            raise
        except (SagaError, ConfigError) as exc:
            raise OperationRefused(
                saga.id, saga.status.value, f"saga {saga.id} cannot be run: {exc}"
            ) from exc

    async def _prepare(
        self,
        claim: Claim,
        action: str,
        actor: str,
        definition: SagaDefinition,
        *,
        holder: str | None,
        force: bool,
        reason: str | None,
    ) -> OperatorRun:
        """Apply the action's status change and record it; give the claim back on any failure."""
        allowed, verb = RULES[action]
        try:
            if claim.saga.status not in allowed:  # it moved on between the read and the claim
                raise OperationRefused(
                    claim.saga.id, claim.saga.status.value, _refusal(claim.saga, allowed, verb)
                )
            if action == "abort":
                await self._not_confirming(claim.saga)  # it may have decided meanwhile
            saga, new_keys = await self._transition(claim, action, actor)
            detail: dict[str, JsonValue] = {
                "previous_status": claim.saga.status.value,
                "status": saga.status.value,
                "previous_owner": holder,
                "force": force,
                "replica": self._owner,
            }
            if new_keys:
                detail["key_generations"] = new_keys
            if reason:
                detail["reason"] = reason
            await self.store.record_event(saga.id, actor, action, detail)
        except BaseException:
            with contextlib.suppress(StoreError):
                await self.store.release(claim.lease)
            raise
        log.info(
            "operator %s of saga %s by %s",
            action,
            saga.id,
            actor,
            extra={"saga_id": saga.id, "saga": saga.name, "event": action, "actor": actor},
        )
        return OperatorRun(action, actor, saga, definition, claim.lease, self.runtime.engine)

    async def _transition(
        self, claim: Claim, action: str, actor: str
    ) -> tuple[SagaInstance, dict[str, JsonValue]]:
        """Write the action's change; return the saga and the steps given a new key generation."""
        bumps = () if action == "abort" else await self._new_key_generations(claim.saga.id)
        new_keys: dict[str, JsonValue] = {
            name: change.columns["key_generation"] for name, change in bumps
        }
        steps = tuple(change for _, change in bumps)
        status = SagaStatus.COMPENSATING
        if action == "abort":
            columns: dict[str, JsonValue] = {"failure_reason": f"aborted by {actor}"}
        elif claim.saga.status is SagaStatus.FAILED:
            columns = {}
            if await self._confirming(claim.saga.id):
                status = SagaStatus.RUNNING  # a TCC saga whose confirms ran out: confirm again
        elif steps:
            return await self.store.write(claim.lease, WriteBatch(steps=steps)), new_keys
        else:
            return claim.saga, new_keys
        columns["next_run_at"] = None
        batch = WriteBatch(saga_status=status, saga_columns=columns, steps=steps)
        return await self.store.write(claim.lease, batch), new_keys

    async def _new_key_generations(self, saga_id: str) -> tuple[tuple[str, StepChange], ...]:
        """The compensations whose last answer was a replayed failure, under a new key.

        Their service answers the old key from its store, so resuming with it could never
        succeed. Nothing else gets a new key: an action is never called again once it has
        failed, and a call whose outcome is unknown (a timeout, a lost connection) keeps its
        key, so that an attempt which did take effect is answered, not executed twice.
        """
        detail = await self.store.get(saga_id)
        return tuple(
            (
                row.step_name,
                StepChange(
                    row.step_order,
                    StepStatus.COMPENSATING,
                    {"key_generation": row.key_generation + 1},
                ),
            )
            for row in detail.steps
            if compensation_replayed(row)
        )


def _refusal(saga: SagaInstance, allowed: frozenset[SagaStatus], verb: str) -> str:
    wanted = " or ".join(sorted(s.value for s in allowed))
    return f"saga {saga.id} is {saga.status.value}; only a {wanted} saga can be {verb}"


def _held(saga: SagaInstance, now: datetime) -> bool:
    return saga.lease_expires_at is not None and saga.lease_expires_at > now


def _held_refusal(saga: SagaInstance) -> OperationRefused:
    return OperationRefused(
        saga.id,
        saga.status.value,
        f"saga {saga.id} is {saga.status.value} and held by {saga.owner} until "
        f"{saga.lease_expires_at}: it is not stuck; retry with force to take it over",
    )
