"""Every response the idempotency layer itself gives: replays and problem+json errors.

Replays carry the stored status, headers and body plus ``Idempotent-Replayed: true``; ``Date``
is fresh and ``Content-Length`` recomputed. Errors are RFC 9457 problems with a stable ``type``.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.idempotency.record import StoredResponse
from proxy.problems import problem_response

PROBLEM_TYPE = "urn:saga-sidecar:problem:"
REPLAYED_HEADER = "Idempotent-Replayed"


def replay(record: StoredResponse) -> web.Response:
    """The stored answer again, marked as a replay."""
    headers = CIMultiDict(record.headers)
    headers[REPLAYED_HEADER] = "true"
    return web.Response(
        status=record.status, reason=record.reason or None, headers=headers, body=record.body
    )


def invalid_key(detail: str) -> web.Response:
    """400: the key header is malformed or repeated."""
    return problem_response(
        400, detail, title="Invalid idempotency key", type_=PROBLEM_TYPE + "idempotency-key-invalid"
    )


def missing_key(header: str) -> web.Response:
    """400: this route requires a key and none was sent."""
    return problem_response(
        400,
        f"this route requires an {header} header",
        title="Idempotency key required",
        type_=PROBLEM_TYPE + "idempotency-key-missing",
    )


def in_flight(header: str) -> web.Response:
    """409: the first request with this key is still being processed."""
    return problem_response(
        409,
        f"a request with this {header} is still being processed; retry later",
        title="Request in progress",
        type_=PROBLEM_TYPE + "idempotency-in-flight",
        headers={"Retry-After": "1"},
    )


def not_retained(record: StoredResponse, max_body: int) -> web.Response:
    """409: the first request finished, but its response body was too large to keep."""
    return problem_response(
        409,
        f"the original request with this key finished with status {record.status}; its "
        f"response body (over {max_body} bytes, or cut short) was not retained, so it cannot "
        "be replayed, and the request is not executed again",
        title="Response not retained",
        type_=PROBLEM_TYPE + "idempotency-not-retained",
        original_status=record.status,
    )


def mismatch(header: str) -> web.Response:
    """422: the key was used for a different request (method, path or body)."""
    return problem_response(
        422,
        f"this {header} was already used for a different request "
        "(method, path with query, or body differ)",
        title="Idempotency key reused",
        type_=PROBLEM_TYPE + "idempotency-mismatch",
    )


def store_unavailable() -> web.Response:
    """503: the store cannot be reached and ``on_store_error`` is ``reject``."""
    return problem_response(
        503,
        "the idempotency store is unavailable; the request was not forwarded",
        title="Service Unavailable",
        type_=PROBLEM_TYPE + "idempotency-store-unavailable",
        headers={"Retry-After": "1"},
    )


def unknown_outcome(exc: UpstreamError) -> web.Response:
    """504 (timeout) or 502 (reset): the request was sent and may or may not have taken effect."""
    cause = "did not answer in time" if isinstance(exc, UpstreamTimeout) else "dropped the call"
    return problem_response(
        exc.status,
        f"the upstream {cause} after the request was sent ({exc.detail}); the request may or "
        "may not have taken effect. Retries with this idempotency key get this answer again "
        "instead of executing the request twice",
        title="Outcome unknown",
        type_=PROBLEM_TYPE + "upstream-outcome-unknown",
    )


def holder_lost(header: str) -> web.Response:
    """504: the key's holder was cut off (its sidecar died) after its request may have been sent."""
    return problem_response(
        504,
        f"the request first sent with this {header} was interrupted (its sidecar stopped, or "
        "lost the idempotency store for longer than its lease) after it may have been sent to "
        "the app; whether it took effect is unknown. Retries with this key get this answer "
        "again instead of executing the request twice; an operator who has checked can release "
        "the key (DELETE /idempotency/{key} on the admin listener)",
        title="Outcome unknown",
        type_=PROBLEM_TYPE + "idempotency-outcome-unknown",
    )
