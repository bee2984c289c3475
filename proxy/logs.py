"""Structured logging (CONTRACT §9): one JSON object per line, and the per-request access log.

``setup_logging`` installs the configured format and level on the root logger.
``access_log_middleware`` assigns the request id (``X-Request-Id``, generated when absent) and logs
one line per proxied request with method, path, status, durations and the idempotency outcome.
Header values are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

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


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines of one event-loop iteration in one write, not one write per line.

    Under load many requests finish in the same iteration; their access lines then cost one
    system call together. Outside a running loop (start-up, threads, shutdown) a line is
    written at once, and ``flush`` writes whatever is pending.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._pending) > 1:
            return  # a write is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                lines, self._pending = self._pending, []
                self.stream.write("\n".join(lines) + "\n")
            super().flush()


def setup_logging(fmt: str, level: str) -> None:
    """Configure the root logger for ``json`` or ``text`` output at ``level``."""
    # Neither format shows the caller, thread or process: skip finding them for every record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class RequestIds:
    """Fresh request ids: 32 hex digits, a random per-process prefix and a counter.

    As unique as a random id (the prefix is drawn again in every forked worker) without a
    system call for randomness on every request.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        """Draw a new prefix and restart the counter."""
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(secrets.randbelow(1 << 32))

    def next(self) -> str:
        """The next id."""
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_request_ids = RequestIds()


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is sane, otherwise a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return _request_ids.next()


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
