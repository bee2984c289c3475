"""Structured logging (CONTRACT §9): one JSON object per line, and the per-request access log.

``setup_logging`` installs the configured format and level on the root logger.
``access_log_middleware`` assigns the request id (``X-Request-Id``, generated when absent) and logs
one line per proxied request with method, path, status, durations and the idempotency outcome.
Header values are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.keys import IDEMPOTENCY_OUTCOME, REQUEST_ID, UPSTREAM_SECONDS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("saga_sidecar.access")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_MAX_REQUEST_ID = 200


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, with any ``extra=`` fields as members."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(fmt: str, level: str) -> None:
    """Configure the root logger for ``json`` or ``text`` output at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is sane, otherwise a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return uuid.uuid4().hex


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id and log one line per request once it is answered."""
    request[REQUEST_ID] = request_id_for(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
        return response
    finally:
        upstream = request.get(UPSTREAM_SECONDS)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "upstream_ms": None if upstream is None else round(upstream * 1000, 3),
                "idempotency": request.get(IDEMPOTENCY_OUTCOME, "bypass"),
                "request_id": request[REQUEST_ID],
            },
        )
