"""Saga trigger routes: a request matching a saga's ``trigger`` starts the saga, not a forward.

The body must be a JSON object (else 400, and no saga row). ``sync`` sagas answer when they end
(``response`` on success, problem+json naming the failed step otherwise); ``async`` sagas answer
``202`` at once, with ``Location``: the saga's status URL (``proxy.sagas.status``). Every answer
carries ``Saga-Id``. A trigger whose ``Idempotency-Key`` was already used answers from the existing
instance instead of starting a second one, marked ``Idempotent-Replayed: true``: the key is stored
as the idempotency guard's ``KeyScoper`` scopes it, so both name a request the same way. The
caller's scope is recorded with the instance (``proxy.sagas.scope``) for its status URL.

A ``TriggerRoute`` is the route's aiohttp handler (the body read by its ``BodyReader``) and the
idempotency guard's executor for it (the body the guard read already). ``SagaTriggers`` picks
the ``TriggerRoute`` of each request from the catalog loaded now (a reload replaces it), or the
forwarder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

from aiohttp import web

from proxy.bodies import BodyReader
from proxy.errors import BadTrigger, InvalidKey, StoreUnavailable
from proxy.forward_executor import ForwardExecutor
from proxy.idempotency.executor import Answer, CoveredRequest, captured
from proxy.idempotency.keys import KeyScoper, parse_key
from proxy.idempotency.replies import REPLAYED_HEADER
from proxy.keys import CONFIG, KEY_SCOPER, SAGAS, TASKS
from proxy.problems import problem_document, problem_of, problem_response
from proxy.sagas.scope import UNREADABLE, request_scope
from proxy.sagas.service import SagaService
from saga_runner import offload
from saga_runner.awaits import AwaitOutcome
from saga_runner.definition import SagaDefinition
from saga_runner.errors import LeaseLost, StoreError, TemplateError, UnstorableJson
from saga_runner.records import CreateResult, Lease, SagaDetail, SagaInstance
from saga_runner.redact import REDACTED
from saga_runner.states import SagaStatus
from saga_runner.storable import clean_text, parse_json
from saga_runner.store import SagaStore

TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


async def parse_input(raw: bytes) -> dict[str, Any]:
    """The trigger's body as a JSON object (an empty body is ``{}``).

    Raises:
        BadTrigger: the body is not a JSON object a saga store can hold (→ 400).
    """
    try:
        data = await offload.sized(len(raw), parse_json, raw or b"{}")
    except UnstorableJson as exc:
        raise BadTrigger(f"the body is not valid JSON or cannot be stored: {exc}") from exc
    if not isinstance(data, dict):
        raise BadTrigger("the body must be a JSON object")
    return data


async def trigger_key(request: web.Request, scoper: KeyScoper, header: str) -> str | None:
    """The trigger's idempotency key, scoped as the idempotency layer scopes it (never raw).

    The key is parsed as that layer parses it, so ``"abc"`` and ``abc`` name the same saga even
    on a route where the layer is disabled.

    Raises:
        InvalidKey: the key header is repeated or not 1-255 visible ASCII characters.
        StoreUnavailable: no ``key_secret`` is set and the idempotency store's secret is unknown.
    """
    key = parse_key(request.headers.getall(header, []), header)
    return None if key is None else await scoper.lookup_key(request.headers, key)


async def trigger_scope(request: web.Request, mode: str) -> str | None:
    """The caller's scope, recorded with the saga for its status URL.

    A sync saga answers its caller directly, so when the scope cannot be computed it still
    runs, recorded as readable by nobody; an async saga's caller needs the status URL.

    Raises:
        StoreUnavailable: (async sagas) no ``key_secret`` is set and the idempotency store's
            secret is unknown.
    """
    try:
        return await request_scope(request)
    except StoreUnavailable:
        if mode == "async":
            raise
        return UNREADABLE


def trigger_headers(request: web.Request, key_header: str) -> tuple[dict[str, str], dict[str, str]]:
    """The trigger's headers to run the saga with, and the copy recorded with the instance.

    Values are cleaned: bytes that are not UTF-8 become U+FFFD (such a value failed the write
    after the instance was created, so the client got a 503 for a saga that ran anyway). The
    recorded copy never holds the client's idempotency key: only ``trigger_key`` is stored.
    """
    headers = {name: clean_text(value) for name, value in request.headers.items()}
    recorded = {
        name: REDACTED if name.lower() == key_header.lower() else value
        for name, value in headers.items()
    }
    return headers, recorded


PROBLEM_TYPE = "urn:saga-sidecar:problem:saga-"


def step_answer(detail: SagaDetail) -> dict[str, Any] | None:
    """The failed step's own answer (``status`` and ``body``, fields already redacted as
    stored), or None when it got none (a timeout, a refused connection, an abort).

    A step whose service reported failure after accepting the work answers with that report:
    the deciding poll's ``status`` and ``body``, or a callback's (or completion message's)
    ``{"outcome": "failure", "result": …}``; the action's own acceptance says nothing of why.
    """
    saga = detail.instance
    failed = next((s for s in detail.steps if s.step_order == saga.failed_step), None)
    if failed is not None and failed.await_outcome == AwaitOutcome.FAILURE:
        if failed.await_kind == "poll" and isinstance(failed.await_result, dict):
            return {k: failed.await_result.get(k) for k in ("status", "body")}
        return {"outcome": AwaitOutcome.FAILURE.value, "result": failed.await_result}
    result = failed.result if failed is not None else None
    if not isinstance(result, dict) or result.get("status") is None:
        return None
    return {"status": result["status"], "body": result.get("body")}


def completed_response(saga: SagaInstance) -> tuple[int, Any, dict[str, Any]]:
    """A completed instance's rendered ``response``: its status, body and headers."""
    stored = saga.response if isinstance(saga.response, dict) else {}
    return int(stored.get("status", 200)), stored.get("body"), stored.get("headers") or {}


def failure_problem(detail: SagaDetail, definition: SagaDefinition | None) -> dict[str, Any]:
    """The problem document of an instance that ended ``compensated`` or ``failed`` (its
    ``failed_step`` is None when the definition is not known)."""
    saga = detail.instance
    stored = saga.response if isinstance(saga.response, dict) else {}
    answer = step_answer(detail)
    return problem_document(
        int(stored.get("status", 502)),
        saga.failure_reason or f"saga {saga.status.value}",
        title="Saga failed",
        type_=PROBLEM_TYPE + saga.status.value,
        saga_id=saga.id,
        saga_status=saga.status.value,
        failed_step=None if definition is None else _failed_step_name(saga, definition),
        **({} if answer is None else {"step_answer": answer}),
    )


def saga_answer(detail: SagaDetail, definition: SagaDefinition) -> web.Response:
    """What a sync trigger answers for an instance in a terminal state."""
    saga = detail.instance
    if saga.status is SagaStatus.COMPLETED:
        status, body, headers = completed_response(saga)
        # No ``response.body``: an empty answer, not the JSON text "null". (``b""``, not None,
        # so the idempotency layer sees a body it can store and replay.)
        response = (
            web.Response(status=status, body=b"")
            if body is None
            else web.json_response(body, status=status)
        )
        for name, value in headers.items():
            response.headers[name] = str(value)
    else:
        response = problem_of(failure_problem(detail, definition))
    response.headers["Saga-Id"] = saga.id
    return response


def _failed_step_name(saga: SagaInstance, definition: SagaDefinition) -> str | None:
    if saga.failed_step is None or not 0 <= saga.failed_step < len(definition.all_steps):
        return None
    return definition.all_steps[saga.failed_step].name


async def terminal_detail(store: SagaStore, saga: SagaInstance) -> SagaDetail:
    """A terminal instance with the steps its answer needs: read for the failed step's answer
    (left out when the store cannot be read now: the saga's outcome is what matters)."""
    detail = SagaDetail(saga, (), (), ())
    if saga.status is not SagaStatus.COMPLETED:
        with suppress(StoreError):
            detail = await store.get(saga.id)
    return detail


async def terminal_answer(
    store: SagaStore, saga: SagaInstance, definition: SagaDefinition
) -> web.Response:
    """``saga_answer`` for a terminal instance."""
    return saga_answer(await terminal_detail(store, saga), definition)


def accepted(saga: SagaInstance, status_path: str) -> web.Response:
    """``202`` with the saga's id and status (async sagas, or a sync one still in progress),
    and its status URL as ``Location``."""
    response = web.json_response({"saga_id": saga.id, "saga_status": saga.status.value}, status=202)
    response.headers["Saga-Id"] = saga.id
    response.headers["Location"] = f"{status_path}/{saga.id}"
    return response


class TriggerRoute:
    """One saga's trigger route: an aiohttp handler, and the idempotency guard's executor."""

    def __init__(self, definition: SagaDefinition, bodies: BodyReader) -> None:
        self.definition = definition
        self.bodies = bodies

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route's handler (a request the idempotency guard does not cover)."""
        return await self.start(request, await self.bodies.read(request))

    @asynccontextmanager
    async def run(self, call: CoveredRequest, max_body: int) -> AsyncIterator[Answer]:
        """Start the saga for a covered request and yield its answer."""
        response = await self.start(call.request, call.body)
        yield captured(response, max_body, transient=self.still_running(response))

    def still_running(self, response: web.StreamResponse) -> bool:
        """Whether a sync saga's answer says it is still running (202 after its run lost the
        lease, 409 for a saga another request started): true only for now, so never stored."""
        return self.definition.mode == "sync" and response.status in (202, 409)

    async def run_unprotected(self, call: CoveredRequest) -> web.StreamResponse:
        """Start the saga for a covered request while the idempotency store is unavailable."""
        return await self.start(call.request, call.body)

    async def start(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Start (or find, by its key) the saga for ``request`` with ``body`` as its input.

        Raises:
            RequestBodyTooLarge: ``body`` is over this route's limit (→ 413).
        """
        self.bodies.check(len(body))
        definition = self.definition
        header = request.app[CONFIG].config.idempotency.header
        runtime = request.app[SAGAS].runtime
        headers, recorded = trigger_headers(request, header)
        status_path = request.app[SAGAS].status_path
        try:
            data = await parse_input(body)
            key = await trigger_key(request, request.app[KEY_SCOPER], header)
            scope = await trigger_scope(request, definition.mode)
            created = await runtime.engine.start(
                definition, data, recorded, key, call_headers=headers, client_scope=scope
            )
        except (BadTrigger, InvalidKey) as exc:
            return problem_response(400, str(exc))
        except StoreUnavailable as exc:
            detail = f"the idempotency store is unavailable to scope the request: {exc.detail}"
            return problem_response(503, detail)
        except TemplateError as exc:
            return problem_response(422, f"cannot start saga {definition.name}: {exc}")
        except StoreError as exc:
            return problem_response(503, f"the saga store is unavailable: {exc}")
        if created.lease is None:
            return await _existing(runtime.store, created.saga, definition, status_path)
        run = _run(request.app, definition, created.lease, created, headers, data)
        if definition.mode == "async":
            await request.app[TASKS].spawn(run)
            return accepted(created.saga, status_path)
        return await request.app[TASKS].shield(run)


async def _existing(
    store: SagaStore, saga: SagaInstance, definition: SagaDefinition, status_path: str
) -> web.Response:
    """The answer to a trigger whose key names ``saga``: what the first request got (a replay),
    or ``409`` while a sync saga still runs."""
    if saga.status in TERMINAL and saga.mode == "sync":
        response = await terminal_answer(store, saga, definition)
        response.headers[REPLAYED_HEADER] = "true"
        return response
    if saga.mode == "async":
        response = accepted(saga, status_path)
        response.headers[REPLAYED_HEADER] = "true"
        return response
    response = problem_response(
        409,
        f"saga {saga.id} for this Idempotency-Key is still {saga.status.value}",
        headers={"Retry-After": "1"},
        saga_id=saga.id,
        saga_status=saga.status.value,
    )
    response.headers["Saga-Id"] = saga.id
    return response


async def _run(
    app: web.Application,
    definition: SagaDefinition,
    lease: Lease,
    created: CreateResult,
    headers: dict[str, str],
    input_data: dict[str, Any],
) -> web.Response:
    service = app[SAGAS]
    runtime = service.runtime
    try:
        saga = await runtime.engine.execute(
            definition, lease, headers, input_data=input_data, started=created
        )
    except LeaseLost:
        return accepted(await runtime.store.get_instance(lease.saga_id), service.status_path)
    except StoreError as exc:
        response = problem_response(
            503, f"the saga store failed; saga {lease.saga_id} resumes when it is back: {exc}"
        )
        response.headers["Saga-Id"] = lease.saga_id
        return response
    if saga.status not in TERMINAL:
        return accepted(saga, service.status_path)
    return await terminal_answer(runtime.store, saga, definition)


class SagaTriggers:
    """The public listener's catch-all route when sagas are configured: a request whose method
    and path are a saga's trigger in the catalog loaded now starts that saga (``TriggerRoute``),
    any other goes to the forwarder. It is both the aiohttp handler and the idempotency guard's
    executor, so a config reload changes the trigger routes without touching the router."""

    def __init__(self, service: SagaService, forward: ForwardExecutor, read_timeout: float) -> None:
        self.service = service
        self.forward = forward
        self.read_timeout = read_timeout

    def route_for(self, request: web.Request) -> TriggerRoute | ForwardExecutor:
        """The trigger route ``request`` takes now, or the forwarder.

        The path is matched as aiohttp matches a plain route: exactly, percent-decoded except
        ``%2F``.
        """
        route = (request.method, request.rel_url.path_safe)
        definition = self.service.catalog.by_route.get(route)
        if definition is None:
            return self.forward
        # sagas.max_input, not idempotency.max_request_body
        return TriggerRoute(definition, BodyReader(self.service.max_input, self.read_timeout))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route's handler (a request the idempotency guard does not cover)."""
        return await self.route_for(request).handle(request)

    def run(self, call: CoveredRequest, max_body: int) -> AbstractAsyncContextManager[Answer]:
        """Run a covered request on its route (see ``proxy.idempotency.executor``)."""
        return self.route_for(call.request).run(call, max_body)

    async def run_unprotected(self, call: CoveredRequest) -> web.StreamResponse:
        """Run a covered request on its route while the idempotency store is unavailable."""
        return await self.route_for(call.request).run_unprotected(call)
