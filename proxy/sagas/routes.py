"""Saga trigger routes: a request matching a saga's ``trigger`` starts the saga, not a forward.

The body must be a JSON object (else 400, and no saga row). ``sync`` sagas answer when they end
(``response`` on success, problem+json naming the failed step otherwise); ``async`` sagas answer
``202`` at once. Every answer carries ``Saga-Id``. A trigger whose ``Idempotency-Key`` was already
used answers from the existing instance instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from aiohttp import web

from proxy.config import LoadedConfig
from proxy.errors import BadTrigger, InvalidKey
from proxy.forward import limited_body
from proxy.idempotency.keys import parse_key
from proxy.keys import CONFIG, SAGAS, TASKS
from proxy.problems import problem_response
from saga_runner import offload
from saga_runner.definition import SagaDefinition
from saga_runner.errors import LeaseLost, StoreError, TemplateError, UnstorableJson
from saga_runner.records import CreateResult, Lease, SagaInstance
from saga_runner.redact import REDACTED
from saga_runner.states import SagaStatus
from saga_runner.storable import clean_text, parse_json

_UNKEYED = b"saga-sidecar trigger key"
TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


async def read_input(
    request: web.Request, limit: int, read_timeout: float | None = None
) -> dict[str, Any]:
    """The trigger's body as a JSON object.

    A body still arriving is read chunk by chunk: a client pausing longer than ``read_timeout``
    gets 408 (instead of holding the connection for ever) and one sending more than ``limit``
    bytes gets 413 as soon as it does.
    """
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if request.content.is_eof():  # all received, or already read whole by the idempotency layer
        raw = await request.read()
    else:
        raw = b"".join([c async for c in limited_body(request.content, limit, read_timeout)])
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        data = await offload.sized(len(raw), parse_json, raw or b"{}")
    except UnstorableJson as exc:
        raise BadTrigger(f"the body is not valid JSON or cannot be stored: {exc}") from exc
    if not isinstance(data, dict):
        raise BadTrigger("the body must be a JSON object")
    return data


def trigger_key(request: web.Request, loaded: LoadedConfig) -> str | None:
    """The trigger's idempotency key, hashed with its scope headers (never stored raw).

    The key is parsed as the idempotency layer parses it, so ``"abc"`` and ``abc`` name the
    same saga even on a route where that layer is disabled.

    Raises:
        InvalidKey: the key header is repeated or not 1-255 visible ASCII characters.
    """
    idem = loaded.config.idempotency
    key = parse_key(request.headers.getall(idem.header, []), idem.header)
    if key is None:
        return None
    # An HMAC with ``key_secret`` (when set): without the secret, a stored value cannot be
    # checked against guessed credentials and keys.
    digest = hmac.new(idem.key_secret.encode() or _UNKEYED, digestmod=hashlib.sha256)
    for name in idem.scope_headers:
        digest.update(request.headers.get(name, "").encode("utf-8", "surrogateescape") + b"\0")
    digest.update(key.encode())
    return digest.hexdigest()


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


def saga_answer(saga: SagaInstance, definition: SagaDefinition) -> web.Response:
    """What a sync trigger answers for an instance in a terminal state."""
    stored = saga.response if isinstance(saga.response, dict) else {}
    if saga.status is SagaStatus.COMPLETED:
        body = stored.get("body")
        status = int(stored.get("status", 200))
        # No ``response.body``: an empty answer, not the JSON text "null". (``b""``, not None,
        # so the idempotency layer sees a body it can store and replay.)
        response = (
            web.Response(status=status, body=b"")
            if body is None
            else web.json_response(body, status=status)
        )
        for name, value in (stored.get("headers") or {}).items():
            response.headers[name] = str(value)
    else:
        response = problem_response(
            int(stored.get("status", 502)),
            saga.failure_reason or f"saga {saga.status.value}",
            title="Saga failed",
            saga_id=saga.id,
            saga_status=saga.status.value,
            failed_step=_failed_step_name(saga, definition),
        )
    response.headers["Saga-Id"] = saga.id
    return response


def _failed_step_name(saga: SagaInstance, definition: SagaDefinition) -> str | None:
    if saga.failed_step is None or not 0 <= saga.failed_step < len(definition.steps):
        return None
    return definition.steps[saga.failed_step].name


def accepted(saga: SagaInstance) -> web.Response:
    """``202`` with the saga's id and status (async sagas, or a sync one still in progress)."""
    response = web.json_response({"saga_id": saga.id, "saga_status": saga.status.value}, status=202)
    response.headers["Saga-Id"] = saga.id
    return response


def trigger_handler(definition: SagaDefinition) -> Any:
    """Build the route handler that starts ``definition``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        loaded = request.app[CONFIG]
        service = request.app[SAGAS]
        runtime = service.runtime
        headers, recorded = trigger_headers(request, loaded.config.idempotency.header)
        try:
            data = await read_input(request, service.max_input, loaded.config.limits.read_timeout)
            created = await runtime.engine.start(
                definition, data, recorded, trigger_key(request, loaded), call_headers=headers
            )
        except (BadTrigger, InvalidKey) as exc:
            return problem_response(400, str(exc))
        except TemplateError as exc:
            return problem_response(422, f"cannot start saga {definition.name}: {exc}")
        except StoreError as exc:
            return problem_response(503, f"the saga store is unavailable: {exc}")
        if created.lease is None:
            return _existing(created.saga, definition)
        run = _run(request.app, definition, created.lease, created, headers, data)
        if definition.mode == "async":
            await request.app[TASKS].spawn(run)
            return accepted(created.saga)
        return await request.app[TASKS].shield(run)

    return handle


def _existing(saga: SagaInstance, definition: SagaDefinition) -> web.Response:
    if saga.status in TERMINAL and saga.mode == "sync":
        return saga_answer(saga, definition)
    if saga.mode == "async":
        return accepted(saga)
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
    runtime = app[SAGAS].runtime
    try:
        saga = await runtime.engine.execute(
            definition, lease, headers, input_data=input_data, started=created
        )
    except LeaseLost:
        return accepted(await runtime.store.get_instance(lease.saga_id))
    except StoreError as exc:
        response = problem_response(
            503, f"the saga store failed; saga {lease.saga_id} resumes when it is back: {exc}"
        )
        response.headers["Saga-Id"] = lease.saga_id
        return response
    return saga_answer(saga, definition) if saga.status in TERMINAL else accepted(saga)


def setup_saga_routes(app: web.Application) -> None:
    """Add one route per saga trigger (before the catch-all forwarder)."""
    for definition in app[SAGAS].catalog:
        trigger = definition.trigger
        app.router.add_route(trigger.method, trigger.path, trigger_handler(definition))
