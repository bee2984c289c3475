"""Structured logging (docs/OPERATIONS.md): one JSON object per line, and the access log.

``log.format: text`` writes ``TextFormatter`` lines instead, with control characters escaped.

``setup_logging`` installs the configured format and level on the root logger.
``request_id_for`` gives a request its id (``X-Request-Id``, generated when absent) and
``log_access`` writes the one line per proxied request with method, path, status, durations and
the idempotency outcome (the public listener's middleware calls both). Header values are never
logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, TextIO

from aiohttp import web

from proxy.ids import UniqueIds
from proxy.keys import IDEMPOTENCY_OUTCOME, SECRET_PATHS, UPSTREAM_SECONDS

access_log = logging.getLogger("saga_sidecar.access")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_MAX_REQUEST_ID = 200


_last_second: list[Any] = [None, ""]


def rfc3339(created: float) -> str:
    """``created`` (epoch seconds) as RFC 3339 UTC with milliseconds: ``2026-12-06T19:55:01.123Z``.

    The date and time up to the second are formatted once per second, not once per line.
    """
    second = int(created)
    if _last_second[0] != second:
        _last_second[0] = second
        _last_second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    millis = min(int((created - second) * 1000), 999)
    return f"{_last_second[1]}.{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, with any ``extra=`` fields as members; ``ts`` is
    RFC 3339 UTC with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators, as \xNN / \uNNNN,
# and the backslash itself, so an escaped byte cannot be confused with one the client wrote.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS |= {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_CONTROLS[ord("\\")] = "\\\\"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape: always exactly one line."""
    return text.translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    """The human-readable format: ``time level logger message``, one line per record.

    Every field is escaped with ``escape_controls``, so a decoded ``%0d%0a`` in a path cannot
    forge a log line, nor an ANSI escape or a NUL reach the terminal. A traceback follows on
    lines of its own, each indented, so none of them can pass for a record. A record that
    carries a duration or a request id (every access line does) ends with ``duration_ms=…``
    and ``request_id=…``.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        for name in _TEXT_EXTRAS:
            value = getattr(record, name, None)
            if value is not None:
                line += f" {name}={value}"
        return escape_controls(line)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


_TEXT_EXTRAS = ("duration_ms", "request_id")


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


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
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Queue one formatted line for this loop iteration's write."""
        self._pending.append(line)
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


class _DirectJson:
    """Where access lines may skip ``logging``: the JSON handler ``setup_logging`` installed.

    An access line costs a ``LogRecord``, an ``extra`` dict and a scan of the record's attributes
    when it goes through ``logging``; written directly it is one f-string. That is only done while
    the result is the same: the access logger enabled for INFO, nothing but that one handler
    (still formatting JSON, without filters) to reach, which ``handler`` checks on every call.
    """

    def __init__(self) -> None:
        self._handler: BatchingStreamHandler | None = None

    def install(self, handler: BatchingStreamHandler | None) -> None:
        """Write directly to ``handler`` from now on (None: always go through ``logging``)."""
        self._handler = handler

    def handler(self) -> BatchingStreamHandler | None:
        """The handler to write an access line to directly, or None to log it."""
        handler = self._handler
        if (
            handler is None
            or access_log.handlers
            or access_log.filters
            or not access_log.propagate
            or access_log.parent is not _root
            or len(_root.handlers) != 1
            or _root.handlers[0] is not handler
            or handler.filters
            or handler.level > logging.INFO
            or type(handler.formatter) is not JsonFormatter
        ):
            return None
        return handler


_root = logging.getLogger()
_direct_json = _DirectJson()


def setup_logging(fmt: str, level: str) -> None:
    """Configure the root logger for ``json`` or ``text`` output at ``level``."""
    # Neither format shows the caller, thread or process: skip finding them for every record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    _root.handlers[:] = [handler]
    _root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _direct_json.install(handler if fmt == "json" else None)


_request_ids = UniqueIds()


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-Id when it is sane, otherwise a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return _request_ids.next()


def access_json_line(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    upstream_ms: float | None,
    idempotency: str,
    request_id: str,
    created: float,
) -> str:
    """The JSON access line ``JsonFormatter`` writes for the same request, built directly."""
    upstream = "null" if upstream_ms is None else repr(upstream_ms)
    return (
        f'{{"ts": "{rfc3339(created)}", "level": "info", "logger": "saga_sidecar.access", '
        f'"msg": {_json_str(f"{method} {path} {status}")}, "method": {_json_str(method)}, '
        f'"path": {_json_str(path)}, "status": {status}, "duration_ms": {duration_ms!r}, '
        f'"upstream_ms": {upstream}, "idempotency": {_json_str(idempotency)}, '
        f'"request_id": {_json_str(request_id)}}}'
    )


REDACTED_SEGMENT = "<redacted>"
"""What logs show instead of a secret path segment (a callback token)."""


def loggable_path(request: web.Request) -> str:
    """``request.path`` as logs may show it: under a secret path (``SECRET_PATHS``, the
    callbacks path), what follows it is replaced by ``REDACTED_SEGMENT``."""
    path = request.path
    for prefix in request.app.get(SECRET_PATHS, ()):
        if path.startswith(prefix + "/"):
            return f"{prefix}/{REDACTED_SEGMENT}"
    return path


def log_access(request: web.Request, status: int, seconds: float, request_id: str) -> None:
    """Log the access line of ``request``, answered with ``status`` after ``seconds``.

    At INFO on ``saga_sidecar.access``: nothing is built when that logger is disabled, and with
    the JSON format ``setup_logging`` installed the line goes straight to its handler.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    method = request.method
    path = loggable_path(request)
    upstream = request.get(UPSTREAM_SECONDS)
    duration_ms = round(seconds * 1000, 3)
    upstream_ms = None if upstream is None else round(upstream * 1000, 3)
    idempotency = request.get(IDEMPOTENCY_OUTCOME, "bypass")
    handler = _direct_json.handler()
    if handler is not None:
        line = access_json_line(
            method, path, status, duration_ms, upstream_ms, idempotency, request_id, time.time()
        )
        handler.write_line(line)
        return
    access_log.info(
        "%s %s %s",
        method,
        path,
        status,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "upstream_ms": upstream_ms,
            "idempotency": idempotency,
            "request_id": request_id,
        },
    )
