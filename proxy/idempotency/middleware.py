"""The idempotency middleware: docs/IDEMPOTENCY.md on the public request path.

Covered request flow: covered? → parse the key (400) → read the body (413) → fingerprint → scoped
lookup key → one-round-trip acquire: finished (replay, or 422 on another fingerprint) / in flight
(409 with ``Retry-After: 1``, or wait) / acquired → the route's ``Executor`` runs it as a tracked
task shielded from client disconnects, under a lease renewer → store the answer (or release the
key) → respond. The record is stored before the response goes out, so an immediate retry is a
replay, never a 409. The guard never knows how a request is executed (``executor``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from functools import partial

from aiohttp import web
from aiojobs import Scheduler

from proxy.bodies import BodyReader
from proxy.config import IdempotencyConfig
from proxy.errors import InvalidKey, StoreUnavailable, UpstreamError
from proxy.idempotency import replies
from proxy.idempotency.executor import Answer, CoveredRequest, Executor, Handler, LocalHandler
from proxy.idempotency.fingerprint import fingerprint
from proxy.idempotency.keys import KeyScoper, parse_key, parse_prefer_wait
from proxy.idempotency.lease import RETRY_INTERVAL, LeaseRenewer
from proxy.idempotency.policy import IdempotencyPolicy, RoutePolicy, keeps_answer
from proxy.idempotency.record import StoredResponse, headers_to_store
from proxy.idempotency.store import (
    Abandoned,
    Acquired,
    AcquireResult,
    Completed,
    IdempotencyStore,
    InFlight,
    ScopeBudget,
    Stored,
    new_token,
    store_from_url,
)
from proxy.keys import (
    CONFIG,
    EXECUTORS,
    IDEMPOTENCY_OUTCOME,
    KEY_SCOPER,
    METRICS,
    READINESS,
    TASKS,
    TRACING,
    UNGUARDED,
)
from proxy.metrics import SidecarMetrics
from proxy.tracing import NULL_DECISION, DecisionSpan

log = logging.getLogger("saga_sidecar.idempotency")

# ``idempotency_store_errors_total{action}``: what the failure affected. ``reject``/``pass``: the
# store failed before forwarding and on_store_error answered 503 / forwarded unprotected;
# ``wait``: a waiting duplicate got 409; ``complete``: an answer was delivered but not stored;
# ``release``: a key stays locked until its lease ends; ``renew``: a lease renewal failed.
STORE_ERROR_ACTIONS = ("reject", "pass", "wait", "complete", "release", "renew")
# ``idempotency_not_stored_total{reason}``: answers delivered whose body was not stored, so their
# duplicates get 409. ``max_body``: over ``max_body``, cut short or still streaming;
# ``scope_budget``: past ``max_stored_bytes_per_scope``.
NOT_STORED_REASONS = ("max_body", "scope_budget")


class IdempotencyGuard:
    """Applies one ``idempotency`` config section to the requests of one application.

    ``executors`` maps a route's handler to the ``Executor`` that runs its covered requests;
    any other handler runs as a ``LocalHandler``; a handler in ``unguarded`` is never covered.
    ``tasks`` tracks each execution as a task shielded from the client's disconnect and drained
    at shutdown.
    """

    def __init__(
        self,
        config: IdempotencyConfig,
        store: IdempotencyStore,
        metrics: SidecarMetrics,
        tasks: Scheduler,
        read_timeout: float | None = None,
        executors: Mapping[Handler, Executor] | None = None,
        unguarded: Collection[Handler] = (),
        decision: Callable[[web.Request], DecisionSpan] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.tasks = tasks
        self.bodies = BodyReader(config.max_request_body, read_timeout)
        self.executors: Mapping[Handler, Executor] = executors or {}
        self.unguarded = frozenset(unguarded)
        # The span of each decision (``proxy.tracing``); one that does nothing when untraced.
        self.decision = decision or _untraced
        self.policy = IdempotencyPolicy(config)
        self.scoper = KeyScoper(config.scope_headers, config.key_secret, store)
        # Best-effort releases of locks whose acquire reply was lost: not requests, so they
        # never hold up the drain at shutdown (``close`` cancels what is left).
        self._drops: set[asyncio.Task[None]] = set()
        for action in STORE_ERROR_ACTIONS:  # exported as 0 from the start, so rate() works
            metrics.idem_store_errors.labels(action)
        for reason in NOT_STORED_REASONS:
            metrics.idem_not_stored.labels(reason)

    def reconfigure(self, config: IdempotencyConfig) -> None:
        """Apply a reloaded ``idempotency`` section to the requests that arrive from now on.

        Its ``store``, ``key_secret`` and ``scope_headers`` are those of the section in effect
        (``proxy.reload.plan`` keeps them): they name the keys already stored.
        """
        self.config = config
        self.bodies = BodyReader(config.max_request_body, self.bodies.read_timeout)
        self.policy = IdempotencyPolicy(config)

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer ``request``: pass it through, refuse it, replay it, or execute it once."""
        policy = self.policy.for_request(request.method, request.raw_path)
        if policy is None or handler in self.unguarded:
            return await handler(request)
        header = self.config.header
        try:
            key = parse_key(request.headers.getall(header, []), header)
        except InvalidKey as exc:
            return replies.invalid_key(str(exc))
        if key is None:
            return replies.missing_key(header) if policy.require_key else await handler(request)
        self.metrics.idem_requests.inc()
        body = await self.bodies.read(request)
        call = CoveredRequest(request, body, fingerprint(request.method, request.raw_path, body))
        executor = self.executors.get(handler) or LocalHandler(handler)
        with self.decision(request) as decision:
            return await self._protect(call, executor, key, policy, decision)

    async def _protect(
        self,
        call: CoveredRequest,
        executor: Executor,
        key: str,
        policy: RoutePolicy,
        decision: DecisionSpan,
    ) -> web.StreamResponse:
        token = new_token()
        lookup = None
        try:
            lookup = await self.scoper.lookup_key(call.request.headers, key)
            decision.keyed(lookup)
            state = await self._acquire(lookup, call.fingerprint, token, policy)
            if isinstance(state, InFlight) and state.fingerprint == call.fingerprint:
                state = await self._wait(call, state, lookup, token, policy)
            if isinstance(state, Abandoned) and state.fingerprint == call.fingerprint:
                state = await self._settle_abandoned(state, token, policy)
        except StoreUnavailable as exc:
            if lookup is not None:
                # An acquire whose reply was lost (timeout) may still have run in the store.
                drop = asyncio.create_task(self._drop(Acquired(lookup, token)))
                self._drops.add(drop)
                drop.add_done_callback(self._drops.discard)
            return await self._store_unavailable(call, executor, exc)
        return await self._answer(call, executor, state, policy)

    async def close(self) -> None:
        """Cancel the releases still retrying (the store is about to close)."""
        for drop in list(self._drops):
            drop.cancel()
        await asyncio.gather(*self._drops, return_exceptions=True)

    async def _drop(self, lock: Acquired) -> None:
        """Release ``lock`` if this request holds it, retrying quickly until its lease ends."""
        deadline = time.monotonic() + self.config.lock_timeout
        while True:
            try:
                await self.store.release(lock)
                return
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    self._count_store_error("release", exc)
                    return
            await asyncio.sleep(RETRY_INTERVAL)

    async def _acquire(
        self, lookup: str, fingerprint: str, token: str, policy: RoutePolicy
    ) -> AcquireResult:
        """Take the lock, kept as the "may have been sent" marker for the record's TTL."""
        lease = self.config.lock_timeout
        return await self.store.acquire(
            lookup, fingerprint, token, lease, policy.ttl, policy.unknown_outcome
        )

    async def _settle_abandoned(
        self, state: Abandoned, token: str, policy: RoutePolicy
    ) -> AcquireResult:
        """A holder died after its request may have been sent: store and replay "unknown"."""
        log.warning(
            "idempotency key abandoned: its holder stopped renewing after the request may have "
            "been sent; answering 504 (outcome unknown) to it and every later duplicate"
        )
        self.metrics.idem_abandoned.inc()
        problem = replies.holder_lost(self.config.header)
        record = StoredResponse(
            status=problem.status,
            headers=headers_to_store(problem.headers.items()),
            body=problem.body if isinstance(problem.body, bytes) else b"",
            fingerprint=state.fingerprint,
            created=time.time(),
            reason=problem.reason,
        )
        if await self.store.settle_abandoned(state, record, policy.ttl):
            return Completed(record)
        return await self._acquire(state.key, state.fingerprint, token, policy)

    def _wait_seconds(self, request: web.Request, policy: RoutePolicy) -> float:
        """``Prefer: wait=N`` is honoured under either ``concurrent`` mode, for at most
        ``lock_timeout``; without it a duplicate waits ``lock_timeout`` under ``wait`` only."""
        preferred = parse_prefer_wait(request.headers.getall("Prefer", []))
        if preferred is not None:
            return min(float(preferred), self.config.lock_timeout)
        return self.config.lock_timeout if policy.concurrent == "wait" else 0.0

    async def _wait(
        self, call: CoveredRequest, state: InFlight, lookup: str, token: str, policy: RoutePolicy
    ) -> AcquireResult:
        seconds = self._wait_seconds(call.request, policy)
        if seconds <= 0:
            return state
        lease = self.config.lock_timeout
        try:
            return await self.store.wait(
                lookup,
                call.fingerprint,
                token,
                lease,
                seconds,
                keep=policy.ttl,
                on_lapse=policy.unknown_outcome,
            )
        except StoreUnavailable as exc:
            # A first request is known to be in flight: never pass this one through.
            self._count_store_error("wait", exc)
            return state

    async def _answer(
        self, call: CoveredRequest, executor: Executor, state: AcquireResult, policy: RoutePolicy
    ) -> web.StreamResponse:
        request = call.request
        if isinstance(state, Acquired):
            request[IDEMPOTENCY_OUTCOME] = "miss"
            return await self.tasks.shield(self._execute(call, executor, state, policy))
        seen = state.record.fingerprint if isinstance(state, Completed) else state.fingerprint
        if seen != call.fingerprint:
            request[IDEMPOTENCY_OUTCOME] = "mismatch"
            self.metrics.idem_mismatches.inc()
            return replies.mismatch(self.config.header)
        if not isinstance(state, Completed) or not state.record.body_retained:
            request[IDEMPOTENCY_OUTCOME] = "conflict"
            self.metrics.idem_conflicts.inc()
            if not isinstance(state, Completed):
                return replies.in_flight(self.config.header)
            return replies.not_retained(state.record, self.config.max_body)
        request[IDEMPOTENCY_OUTCOME] = "hit"
        self.metrics.idem_hits.inc()
        return replies.replay(state.record)

    async def _execute(
        self, call: CoveredRequest, executor: Executor, lock: Acquired, policy: RoutePolicy
    ) -> web.StreamResponse:
        """Run the request once, store or release, then respond (a shielded, tracked task)."""
        on_error = partial(self._count_store_error, "renew")
        async with LeaseRenewer(self.store, lock, self.config.lock_timeout, on_error) as renewer:
            try:
                async with executor.run(call, self.config.max_body) as answer:
                    await self._settle(lock, call, answer, policy)
                    await renewer.stop()  # settled: a large body still streaming needs no lock
                    return await answer.respond(call.request)
            except UpstreamError as exc:
                return await self._settle_failure(lock, call, exc, policy)
            except Exception:
                await self._release(lock)
                raise

    async def _settle(
        self, lock: Acquired, call: CoveredRequest, answer: Answer, policy: RoutePolicy
    ) -> None:
        if answer.transient or not keeps_answer(answer.status, policy.unknown_outcome):
            await self._release(lock)
            return
        record = StoredResponse(
            status=answer.status,
            headers=headers_to_store(answer.headers.items()),
            body=answer.body or b"",
            fingerprint=call.fingerprint,
            created=time.time(),
            body_retained=answer.body is not None,
            reason=answer.reason,
        )
        if not record.body_retained:
            self.metrics.idem_not_stored.labels("max_body").inc()
        await self._complete(lock, record, policy.ttl, call.request)

    async def _settle_failure(
        self, lock: Acquired, call: CoveredRequest, exc: UpstreamError, policy: RoutePolicy
    ) -> web.StreamResponse:
        """Nothing sent: release. Sent, no answer: hold (store a problem) or release."""
        if not exc.sent or policy.unknown_outcome == "release":
            await self._release(lock)
            raise exc
        response = replies.unknown_outcome(exc)
        body = response.body if isinstance(response.body, bytes) else b""
        answer = Answer(response.status, response.reason, response.headers.copy(), body)
        await self._settle(lock, call, answer, policy)
        return response

    async def _complete(
        self, lock: Acquired, record: StoredResponse, ttl: float, request: web.Request
    ) -> None:
        try:
            budget = await self._budget(request) if record.body_retained else None
            kept, stored = await self.store.complete_within(lock, record, ttl, budget)
        except StoreUnavailable as exc:
            # The client still gets its answer; the lock expires after one lease.
            self._count_store_error("complete", exc)
            return
        if stored is Stored.LOST:
            log.warning(
                "idempotency answer not stored: another request holds the key (this request's "
                "lease lapsed, and a retry took the key over or recorded its outcome as unknown)"
            )
        elif stored is Stored.KEY_WAS_GONE:
            log.warning(
                "idempotency lock was gone when the answer came (the store lost its data, or an "
                "operator released the key); nobody else held the key, so the answer was stored"
            )
        if stored and record.body_retained and not kept.body_retained:
            self.metrics.idem_not_stored.labels("scope_budget").inc()

    async def _budget(self, request: web.Request) -> ScopeBudget | None:
        """The budget the request's answer counts against (None: ``0``, no budget)."""
        limit = self.config.max_stored_bytes_per_scope
        if not limit:
            return None
        return ScopeBudget(await self.scoper.scope_key(request.headers), limit)

    async def _release(self, lock: Acquired) -> None:
        try:
            await self.store.release(lock)
        except StoreUnavailable as exc:
            self._count_store_error("release", exc)

    async def _store_unavailable(
        self, call: CoveredRequest, executor: Executor, exc: StoreUnavailable
    ) -> web.StreamResponse:
        action = self.config.on_store_error
        call.request[IDEMPOTENCY_OUTCOME] = "store_error"
        self._count_store_error(action, exc)
        if action == "reject":
            return replies.store_unavailable()
        return await executor.run_unprotected(call)

    def _count_store_error(self, action: str, exc: StoreUnavailable) -> None:
        log.warning("idempotency store error (%s): %s", action, exc.detail)
        self.metrics.idem_store_errors.labels(action).inc()


def _untraced(request: web.Request) -> DecisionSpan:
    return NULL_DECISION


IDEMPOTENCY_GUARD: web.AppKey[IdempotencyGuard] = web.AppKey("idempotency_guard")


def guarded(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """What answers ``request``: its handler's coroutine itself when no policy covers it.

    The public listener awaits this inside its one middleware; a request the idempotency
    policy does not cover (every ``GET`` by default) costs a policy lookup and no extra frame.
    """
    guard = request.app.get(IDEMPOTENCY_GUARD)
    if guard is None or guard.policy.for_request(request.method, request.raw_path) is None:
        return handler(request)
    return guard.handle(request, handler)


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply Idempotency-Key protection (docs/IDEMPOTENCY.md) to an application's requests."""
    return await guarded(request, handler)


async def idempotency_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the configured idempotency store, register its readiness probe, close it at exit.

    Append it before the task scheduler's context, so in-flight requests are drained (and their
    answers stored) before the store closes.
    """
    loaded = app[CONFIG].config
    tracing = app.get(TRACING)
    store = store_from_url(loaded.idempotency.store)
    unguarded: frozenset[Handler] = app.get(UNGUARDED) or frozenset()
    guard = IdempotencyGuard(
        loaded.idempotency,
        store,
        app[METRICS],
        app[TASKS],
        loaded.limits.read_timeout,
        executors=app.get(EXECUTORS),
        unguarded=unguarded,
        decision=None if tracing is None else tracing.decision,
    )
    app[IDEMPOTENCY_GUARD] = guard
    app[KEY_SCOPER] = guard.scoper
    app[READINESS].register("idempotency_store", store.ping)
    yield
    await guard.close()
    await store.close()
