"""RFC 9457 problem details: the one format of every error the sidecar itself produces.

``problem_response`` builds an ``application/problem+json`` response (``problem_document`` its
body alone, ``problem_of`` the response of such a body); ``problem_for_failure``
(used by ``problems_middleware`` and the public listener's middleware) turns aiohttp HTTP
exceptions and any unexpected exception into one, so no client ever sees a traceback.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from proxy.errors import PathEscape, RequestBodyError, UpstreamError
from proxy.logs import loggable_path

PROBLEM_CONTENT_TYPE = "application/problem+json"
log = logging.getLogger("saga_sidecar.problems")


def problem_document(
    status: int, detail: str, *, title: str | None = None, type_: str = "about:blank", **extra: Any
) -> dict[str, Any]:
    """The RFC 9457 members (type, title, status, detail) and ``extra`` ones, as a dict."""
    return {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_of(document: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """The ``application/problem+json`` response carrying ``document`` (its ``status``)."""
    response = web.Response(
        status=int(document["status"]),
        body=json.dumps(document).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """Return an ``application/problem+json`` response with type, title, status and detail."""
    document = problem_document(status, detail, title=title, type_=type_, **extra)
    return problem_of(document, headers)


def problem_for_exception(exc: BaseException) -> web.Response:
    """Map a known exception to its problem response (500 for anything unexpected)."""
    if isinstance(exc, UpstreamError):
        return problem_response(exc.status, exc.detail, title=exc.title)
    if isinstance(exc, RequestBodyError):
        # The rest of the body is unread: the connection cannot carry another request.
        response = problem_response(exc.status, str(exc), title=exc.title)
        response.force_close()
        return response
    if isinstance(exc, PathEscape):
        return problem_response(exc.status, str(exc))
    if isinstance(exc, web.HTTPException):
        detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        return problem_response(exc.status, detail or exc.reason, headers=_kept_headers(exc))
    return problem_response(500, "the sidecar failed to handle this request")


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}


def problem_for_failure(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem answering ``exc``, raised while handling ``request``; None: let it propagate.

    A redirect (an HTTP exception below 400) propagates as aiohttp's own response, and so does a
    failure after part of the response went out: only a closed connection can say it failed.
    Unexpected failures are logged with their traceback; the client sees none of it.
    """
    if isinstance(exc, web.HTTPException):
        return problem_for_exception(exc) if exc.status >= 400 else None
    if isinstance(exc, (UpstreamError, RequestBodyError, PathEscape)):
        return problem_for_exception(exc)
    log.error("unhandled error on %s %s", request.method, loggable_path(request), exc_info=exc)
    if request.writer.output_size > 0:
        return None
    return problem_for_exception(exc)


@web.middleware
async def problems_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Render every sidecar error (HTTP exceptions, unexpected failures) as problem+json."""
    try:
        response: web.StreamResponse = await handler(request)
    except Exception as exc:
        problem = problem_for_failure(request, exc)
        if problem is None:
            raise
        return problem
    return response
