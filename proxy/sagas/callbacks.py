"""Callbacks of awaiting steps on the public listener: ``POST <sagas.callbacks.path>/<token>``.

Every call of a step that awaits a callback carries ``Saga-Callback: <callback URL>/<token>``;
the service (or whatever finishes its work) completes the step by posting
``{"outcome": "success" | "failure", "result": <any JSON>}`` there, or keeps it waiting with
``{"outcome": "heartbeat"}`` (the await's timeout starts again). The store decides in the
statement that writes (``SagaStore.callback``); the answers:

- ``202`` recorded (a heartbeat: the timeout moved);
- ``200`` the same outcome was already recorded (a retried callback is harmless);
- ``409`` a different outcome was already recorded;
- ``404`` unknown token: a malformed, forged or expired token all look the same;
- ``410`` the step no longer waits (its timeout or the saga's deadline passed, or it was aborted);
- ``400`` a body that is not such a JSON object, ``413`` one over 1 MiB; ``405`` another method.

Every answer is problem+json but ``202``/``200`` (a small JSON status). After recording an
outcome this replica claims the saga and resumes it in the background (``RecoveryWorker``); if
it dies first, the saga is due at once, so any replica's recovery loop resumes it. The token is
never logged or counted: metrics carry the outcome and why a callback was refused only.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from proxy.bodies import BodyReader
from proxy.errors import BadCallback, RequestBodyTooLarge, RuntimeUnavailable
from proxy.keys import CONFIG, METRICS, SAGAS, SECRET_PATHS
from proxy.metrics import CALLBACK_VIA_HTTP
from proxy.problems import problem_response
from proxy.sagas.own_paths import serve_own_path
from saga_runner.awaits import (
    CALLBACK_OUTCOMES,
    AwaitOutcome,
    CallbackAnswer,
    Verdict,
    token_hash,
    well_formed,
)
from saga_runner.brokers.base import RejectReason
from saga_runner.errors import StoreError, UnstorableJson
from saga_runner.storable import parse_json

log = logging.getLogger("saga_sidecar.saga")

MAX_BODY: Final = 1024**2
"""The largest callback body read (a larger one gets ``413``)."""


_ANSWERS: Final = {
    Verdict.RECORDED: (202, "recorded"),
    Verdict.SAME: (200, "this outcome was already recorded"),
    Verdict.CONFLICT: (409, "a different outcome was already recorded for this step"),
    Verdict.UNKNOWN: (404, "no step waits for a callback with this token"),
    Verdict.GONE: (410, "the step no longer waits for its outcome (timeout, deadline or abort)"),
}
_REJECTED: Final = {
    Verdict.CONFLICT: RejectReason.CONFLICT,
    Verdict.UNKNOWN: RejectReason.UNKNOWN_TOKEN,
    Verdict.GONE: RejectReason.NOT_WAITING,
}
"""The ``reason`` of ``saga_callback_rejected_total`` for each refusal."""


def parse_callback(raw: bytes) -> tuple[AwaitOutcome, Any]:
    """The outcome and result of a callback body.

    Raises:
        BadCallback: not a JSON object with a known ``outcome`` (and, besides, only ``result``),
            or JSON a saga store cannot keep (``NaN``, ``\\u0000``, nested too deep ...).
    """
    try:
        document = parse_json(raw)
    except UnstorableJson as exc:
        raise BadCallback(
            f"the body is not JSON every saga store can keep: {exc}", RejectReason.BAD_JSON
        ) from None
    if not isinstance(document, dict):
        raise BadCallback(
            'the body must be a JSON object like {"outcome": "success"}', RejectReason.BAD_BODY
        )
    extra = sorted(set(document).difference({"outcome", "result"}))
    if extra:
        raise BadCallback(
            f"unknown member {extra[0]!r} (only outcome and result)", RejectReason.BAD_BODY
        )
    outcome = document.get("outcome")
    if outcome not in CALLBACK_OUTCOMES:
        names = ", ".join(o.value for o in CALLBACK_OUTCOMES)
        raise BadCallback(f"outcome must be one of {names}", RejectReason.BAD_BODY)
    return AwaitOutcome(outcome), document.get("result")


async def handle_callback(request: web.Request) -> web.StreamResponse:
    """Apply one callback (any method reaches here: nothing under the path is forwarded)."""
    if request.method != "POST":
        detail = f"{request.method} is not allowed on a callback URL"
        return problem_response(405, detail, headers={"Allow": "POST"})
    metrics = request.app[METRICS]
    reader = BodyReader(MAX_BODY, request.app[CONFIG].config.limits.read_timeout)
    try:
        outcome, result = parse_callback(await reader.read(request))
    except RequestBodyTooLarge:
        metrics.saga_callback_rejected.labels(RejectReason.TOO_LARGE).inc()
        raise  # answered 413 like any body over its limit
    except BadCallback as exc:
        metrics.saga_callback_rejected.labels(exc.reason).inc()
        return problem_response(400, str(exc))
    token = request.match_info.get("token", "")
    try:
        answer = await _apply(request, token, outcome, result)
    except (StoreError, RuntimeUnavailable) as exc:
        return problem_response(503, f"the saga store is unavailable: {exc}")
    status, detail = _ANSWERS[answer.verdict]
    reason = _REJECTED.get(answer.verdict)
    if reason is not None:
        metrics.saga_callback_rejected.labels(reason).inc()
        return problem_response(status, detail)
    metrics.saga_callbacks.labels(CALLBACK_VIA_HTTP, outcome.value).inc()
    document = {"status": answer.verdict.value, "outcome": outcome.value}
    if answer.saga_id is not None:
        document["saga_id"] = answer.saga_id
    return web.json_response(document, status=status)


async def _apply(
    request: web.Request, token: str, outcome: AwaitOutcome, result: Any
) -> CallbackAnswer:
    if not well_formed(token):
        return CallbackAnswer(Verdict.UNKNOWN)
    service = request.app[SAGAS]
    runtime = service.runtime
    # Stored like a step's answer: the fields of ``redact.fields`` never reach the records.
    stored = runtime.engine.redactor.redact_body(result)
    answer = await runtime.store.callback(token_hash(token), outcome, stored)
    log.info(
        "callback %s for saga %s: %s",
        outcome.value,
        answer.saga_id,
        answer.verdict.value,
        extra={
            "saga_id": answer.saga_id,
            "saga": answer.saga_name,
            "event": "callback",
            "outcome": outcome.value,
            "verdict": answer.verdict.value,
        },
    )
    if answer.verdict is Verdict.RECORDED and outcome.reported and answer.saga_id is not None:
        # Recorded: the saga is due. This replica goes on with it now if nobody holds it (the
        # run that parked it checks again after its write, in case it was not parked yet);
        # if the claim fails, any replica's recovery loop finds the saga due.
        try:
            await service.recovery.continue_now(answer.saga_id)
        except StoreError as exc:
            log.warning("saga %s: recorded, not resumed here: %s", answer.saga_id, exc)
    return answer


def setup_callback_routes(app: web.Application) -> None:
    """Serve the callbacks path and everything under it (before the saga triggers and the
    catch-all forwarder), outside the idempotency guard."""
    path = app[SAGAS].callbacks_path
    serve_own_path(app, path, "token", handle_callback)
    app[SECRET_PATHS] = (*app.get(SECRET_PATHS, ()), path)
