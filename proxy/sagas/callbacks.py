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
Parsing and applying are shared with the brokers' completion messages (``proxy.sagas.outcomes``).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from proxy.bodies import BodyReader
from proxy.errors import BadCallback, RequestBodyTooLarge, RuntimeUnavailable
from proxy.keys import CONFIG, METRICS, SAGAS, SECRET_PATHS
from proxy.metrics import CALLBACK_VIA_HTTP
from proxy.problems import problem_response
from proxy.sagas.outcomes import REJECTED, VERDICT_DETAIL, apply_outcome, parse_callback
from proxy.sagas.own_paths import serve_own_path
from saga_runner.awaits import Verdict
from saga_runner.brokers.base import RejectReason
from saga_runner.errors import StoreError

MAX_BODY: Final = 1024**2
"""The largest callback body read (a larger one gets ``413``)."""


_STATUS: Final = {
    Verdict.RECORDED: 202,
    Verdict.SAME: 200,
    Verdict.CONFLICT: 409,
    Verdict.UNKNOWN: 404,
    Verdict.GONE: 410,
}


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
        answer = await apply_outcome(
            request.app[SAGAS], metrics, CALLBACK_VIA_HTTP, token, outcome, result
        )
    except (StoreError, RuntimeUnavailable) as exc:
        return problem_response(503, f"the saga store is unavailable: {exc}")
    status, detail = _STATUS[answer.verdict], VERDICT_DETAIL[answer.verdict]
    reason = REJECTED.get(answer.verdict)
    if reason is not None:
        metrics.saga_callback_rejected.labels(reason).inc()
        return problem_response(status, detail)
    document = {"status": answer.verdict.value, "outcome": outcome.value}
    if answer.saga_id is not None:
        document["saga_id"] = answer.saga_id
    return web.json_response(document, status=status)


def setup_callback_routes(app: web.Application) -> None:
    """Serve the callbacks path and everything under it (before the saga triggers and the
    catch-all forwarder), outside the idempotency guard."""
    path = app[SAGAS].callbacks_path
    serve_own_path(app, path, "token", handle_callback)
    app[SECRET_PATHS] = (*app.get(SECRET_PATHS, ()), path)
