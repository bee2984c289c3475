"""The saga admin API (docs/OPERATIONS.md): list, show, retry and abort sagas, behind the token.

``GET /sagas?status=&name=&business_id=&limit=&before=`` lists sagas newest first with the cursor
of the next page; ``GET /sagas/{id}`` is one saga with its step timeline and events;
``POST /sagas/{id}/retry`` and ``POST /sagas/{id}/abort`` answer ``202`` with the saga once the
action is recorded and keep running it in the background, on the public app's task scheduler
(drained at shutdown before the saga runtime closes). Either POST takes an optional JSON body
``{"actor": "...", "reason": "..."}`` (retry also ``"force": true``); the actor recorded is
``admin-api:<actor>``, or ``admin-api:<client address>`` without one. Errors are problem+json:
400 bad input, 404 unknown saga, 409 a status that does not allow the action, 503 store down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from aiojobs import Scheduler

from proxy.errors import RuntimeUnavailable
from proxy.keys import PUBLIC_APP, SAGAS, TASKS
from proxy.problems import problem_response
from saga_runner import offload
from saga_runner.errors import (
    OperationRefused,
    OperatorInputError,
    SagaNotFound,
    StoreError,
)
from saga_runner.operations import (
    ListQuery,
    OperatorRun,
    SagaOperations,
    clean_actor,
    clean_reason,
)
from saga_runner.views import catalog_step_names, detail_view, page_view, saga_view

log = logging.getLogger("saga_sidecar.admin")

LIST_PARAMS: Final = ("status", "name", "business_id", "limit", "before")
ACTION_FIELDS: Final = {
    "retry": frozenset({"actor", "reason", "force"}),
    "abort": frozenset({"actor", "reason"}),
}
MAX_ACTION_BODY: Final = 16 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def saga_operations(app: web.Application) -> SagaOperations:
    """Operations over the process's open saga runtime.

    Raises:
        RuntimeUnavailable: the runtime is not open (the sidecar is starting or stopping).
    """
    return SagaOperations(app[SAGAS].runtime)


def operator_errors(handler: Handler) -> Handler:
    """Answer the saga operations' exceptions with the matching problem+json."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OperatorInputError as exc:
            return problem_response(400, str(exc))
        except SagaNotFound as exc:
            return problem_response(404, str(exc))
        except OperationRefused as exc:
            return problem_response(409, str(exc), saga_id=exc.saga_id, saga_status=exc.status)
        except StoreError as exc:
            return problem_response(503, f"the saga store is unavailable: {exc}")
        except RuntimeUnavailable as exc:
            return problem_response(503, f"the saga runtime is not running: {exc}")

    return wrapped


def list_query(request: web.Request, allowed: tuple[str, ...] = LIST_PARAMS) -> ListQuery:
    """The list filters of the request's query string.

    Raises:
        OperatorInputError: an unknown or repeated parameter, or a bad value.
    """
    for name in request.query:
        if name not in allowed:
            raise OperatorInputError(
                f"unknown query parameter {name!r}: expected {', '.join(allowed)}"
            )
        if len(request.query.getall(name)) > 1:
            raise OperatorInputError(f"query parameter {name!r} given more than once")
    return ListQuery.parse(**{name: request.query.get(name) for name in LIST_PARAMS})


@operator_errors
async def list_sagas(request: web.Request) -> web.Response:
    """``GET /sagas``: one page, newest first, and a link to the next."""
    query = list_query(request)
    operations = saga_operations(request.app)
    page = await operations.list(query)
    body = page_view(page, catalog_step_names(operations.runtime.catalog))
    if page.next_cursor is not None:
        body["next"] = str(request.rel_url.update_query(before=page.next_cursor.encode()))
    return web.json_response(body)


@operator_errors
async def show_saga(request: web.Request) -> web.Response:
    """``GET /sagas/{id}``: the instance, its steps with every attempt, and its events."""
    operations = saga_operations(request.app)
    detail = await operations.show(request.match_info["saga_id"])
    # A saga with a large input takes long to redact and encode: off the loop.
    text = await offload.off_loop(lambda: json.dumps(detail_view(detail, operations.redact)))
    return web.json_response(text=text)


async def action_body(request: web.Request, action: str) -> dict[str, Any]:
    """The optional JSON object of a retry/abort request.

    Raises:
        OperatorInputError: not a JSON object, an unknown key, or a value of the wrong type.
    """
    if (request.content_length or 0) > MAX_ACTION_BODY:
        raise OperatorInputError(f"the body must be at most {MAX_ACTION_BODY} bytes")
    raw = await request.read()
    if len(raw) > MAX_ACTION_BODY:
        raise OperatorInputError(f"the body must be at most {MAX_ACTION_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise OperatorInputError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise OperatorInputError("the body must be a JSON object")
    allowed = ACTION_FIELDS[action]
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise OperatorInputError(
            f"unknown field {unknown[0]!r}: expected {', '.join(sorted(allowed))}"
        )
    for key, kind in (("actor", str), ("reason", str), ("force", bool)):
        if key in body and not isinstance(body[key], kind):
            raise OperatorInputError(f"{key} must be a {'string' if kind is str else 'boolean'}")
    return body


def request_actor(request: web.Request, given: str | None) -> str:
    """Who acts: ``admin-api:<given name>``, or ``admin-api:<client address>``."""
    return f"admin-api:{clean_actor(given or request.remote or 'unknown')}"


async def run_in_background(run: OperatorRun) -> None:
    """Drive an operator run to its end, logging (never raising) what stops it."""
    try:
        final = await run.run()
    except StoreError as exc:
        log.warning("operator %s of saga %s paused, store failed: %s", run.action, run.saga.id, exc)
        return
    except Exception:
        log.exception("operator %s of saga %s failed unexpectedly", run.action, run.saga.id)
        return
    log.info(
        "operator %s of saga %s ended %s",
        run.action,
        run.saga.id,
        final.status.value,
        extra={"saga_id": run.saga.id, "saga": run.saga.name, "event": f"{run.action}_finished"},
    )


def operator_scheduler(app: web.Application) -> Scheduler:
    """The public app's task scheduler, which runs operator retries and aborts.

    Raises:
        RuntimeUnavailable: there is none open (the sidecar is starting or stopping).
    """
    public = app.get(PUBLIC_APP)
    scheduler = None if public is None else public.get(TASKS)
    if scheduler is None or scheduler.closed:
        raise RuntimeUnavailable("no task scheduler to run the saga on")
    return scheduler


async def spawn(scheduler: Scheduler, run: OperatorRun) -> None:
    """Run ``run`` in the background; if the scheduler refuses it, give the saga back.

    Raises:
        RuntimeUnavailable: the scheduler closed meanwhile; the action stays recorded and the
            released saga is resumed by recovery (this replica's or another's).
    """
    try:
        await scheduler.spawn(run_in_background(run))
    except RuntimeError as exc:
        await run.abandon()
        raise RuntimeUnavailable(
            f"the {run.action} is recorded but cannot run here ({exc}); recovery resumes it"
        ) from exc


def accepted(run: OperatorRun, operations: SagaOperations) -> web.Response:
    """``202`` with the saga as the action left it, and where to follow it."""
    response = web.json_response(
        saga_view(
            run.saga, operations.redact, catalog_step_names(operations.runtime.catalog)(run.saga)
        ),
        status=202,
    )
    response.headers["Location"] = f"/sagas/{quote(run.saga.id, safe='')}"
    return response


@operator_errors
async def retry_saga(request: web.Request) -> web.Response:
    """``POST /sagas/{id}/retry``: resume a failed saga's compensation, or a stuck saga."""
    body = await action_body(request, "retry")
    operations = saga_operations(request.app)
    scheduler = operator_scheduler(request.app)
    run = await operations.retry(
        request.match_info["saga_id"],
        request_actor(request, body.get("actor")),
        force=bool(body.get("force", False)),
        reason=clean_reason(body.get("reason")),
    )
    await spawn(scheduler, run)
    return accepted(run, operations)


@operator_errors
async def abort_saga(request: web.Request) -> web.Response:
    """``POST /sagas/{id}/abort``: compensate a running saga now."""
    body = await action_body(request, "abort")
    operations = saga_operations(request.app)
    scheduler = operator_scheduler(request.app)
    run = await operations.abort(
        request.match_info["saga_id"],
        request_actor(request, body.get("actor")),
        reason=clean_reason(body.get("reason")),
    )
    await spawn(scheduler, run)
    return accepted(run, operations)


def setup_saga_admin_routes(app: web.Application) -> None:
    """Add the saga API routes to the admin app."""
    app.router.add_get("/sagas", list_sagas)
    app.router.add_get("/sagas/{saga_id}", show_saga)
    app.router.add_post("/sagas/{saga_id}/retry", retry_saga)
    app.router.add_post("/sagas/{saga_id}/abort", abort_saga)
