"""A saga's status URL on the public listener: ``GET <sagas.status_path>/<saga id>``.

An async trigger's ``202`` points here (``Location``). The answer is ``200`` with
``{"saga_id", "saga_status", "response"}``: ``response`` is the rendered success response
(``{"status", "body"}``) once the saga completed, the problem document a sync trigger answers
(``proxy.sagas.routes.failure_problem``) once it ended ``compensated`` or ``failed``, else null.
Only a request of the trigger's scope reads it (``proxy.sagas.scope``); any other gets the
``404`` an unknown or malformed id gets, so the answer tells nothing about other tenants'
sagas. ``Prefer: wait=N`` holds the answer until the saga ends or N seconds (at most
``MAX_WAIT``) pass (``proxy.sagas.watch``). Every path under the status path is the sidecar's:
never forwarded to the app, never covered by the idempotency guard.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from aiohttp import web

from proxy.errors import RuntimeUnavailable, StoreUnavailable
from proxy.idempotency.keys import parse_prefer_wait
from proxy.keys import SAGAS
from proxy.problems import problem_response
from proxy.sagas.own_paths import serve_own_path
from proxy.sagas.routes import completed_response, failure_problem, terminal_detail
from proxy.sagas.scope import may_read, request_scope
from saga_runner.definition import SagaDefinition
from saga_runner.errors import DefinitionMissing, SagaNotFound, StoreError
from saga_runner.records import SagaInstance
from saga_runner.runtime import SagaRuntime
from saga_runner.states import ACTIVE_SAGA_STATUSES, SagaStatus

MAX_WAIT = 60
"""The longest ``Prefer: wait`` honoured, in seconds (a longer one waits this long)."""

_SAGA_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALLOWED = "GET, HEAD"


def unknown_saga() -> web.Response:
    """``404``: no saga this request may read has this id."""
    return problem_response(404, "no saga with this id is visible to this request")


async def status_document(runtime: SagaRuntime, saga: SagaInstance) -> dict[str, Any]:
    """``{"saga_id", "saga_status", "response"}`` of ``saga`` as it is now."""
    response: Any = None
    if saga.status is SagaStatus.COMPLETED:
        status, body, _ = completed_response(saga)
        response = {"status": status, "body": body}
    elif saga.status not in ACTIVE_SAGA_STATUSES:
        detail = await terminal_detail(runtime.store, saga)
        response = failure_problem(detail, await _definition(runtime, saga))
    return {"saga_id": saga.id, "saga_status": saga.status.value, "response": response}


async def _definition(runtime: SagaRuntime, saga: SagaInstance) -> SagaDefinition | None:
    """The definition ``saga`` runs under (None when it cannot be read: the failed step's
    name is then left out)."""
    try:
        return await runtime.definition_for(saga.definition_hash)
    except (DefinitionMissing, StoreError):
        return None


def wait_seconds(request: web.Request) -> int | None:
    """The ``Prefer: wait=N`` of ``request``, at most ``MAX_WAIT``; None when it has none."""
    preferred = parse_prefer_wait(request.headers.getall("Prefer", []))
    return None if preferred is None else min(preferred, MAX_WAIT)


async def handle_status(request: web.Request) -> web.StreamResponse:
    """Answer a request under the status path (every method: nothing there is forwarded)."""
    if request.method not in ("GET", "HEAD"):
        detail = f"{request.method} is not allowed on a saga's status URL"
        return problem_response(405, detail, headers={"Allow": _ALLOWED})
    saga_id = request.match_info.get("saga_id", "")
    if not _SAGA_ID_RE.match(saga_id):
        return unknown_saga()
    seconds = wait_seconds(request)
    try:
        document = await _visible_status(request, saga_id, seconds or 0)
    except StoreUnavailable as exc:
        detail = f"the idempotency store is unavailable to scope the request: {exc.detail}"
        return problem_response(503, detail)
    except (StoreError, RuntimeUnavailable) as exc:
        return problem_response(503, f"the saga store is unavailable: {exc}")
    if document is None:
        return unknown_saga()
    response = web.json_response(document)
    response.headers["Saga-Id"] = saga_id
    response.headers["Cache-Control"] = "no-store"
    if seconds is not None:
        response.headers["Preference-Applied"] = f"wait={seconds}"
    return response


async def _visible_status(
    request: web.Request, saga_id: str, seconds: float
) -> dict[str, Any] | None:
    """The status document of ``saga_id`` after waiting up to ``seconds`` for its end; None
    when there is no such saga or the request's scope is not the trigger's."""
    scope = await request_scope(request)
    service = request.app[SAGAS]
    runtime = service.runtime
    read = partial(runtime.store.get_instance, saga_id)
    try:
        with service.watch.watching(saga_id) as waiter:
            saga = await read()
            if not may_read(saga.client_scope, scope):
                return None
            if seconds > 0:
                saga = await waiter.until_ended(saga, read, seconds)
    except SagaNotFound:
        return None
    return await status_document(runtime, saga)


async def _stop_waiting(app: web.Application) -> None:
    """The listener is draining: held status requests answer now."""
    app[SAGAS].watch.close()


def setup_status_routes(app: web.Application) -> None:
    """Serve the status path and everything under it (before the saga triggers and the
    catch-all forwarder), outside the idempotency guard."""
    serve_own_path(app, app[SAGAS].status_path, "saga_id", handle_status)
    app.on_shutdown.append(_stop_waiting)
