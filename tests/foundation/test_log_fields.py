"""Log timestamps and the fields a reader of text logs needs.

JSON ``ts`` is RFC 3339 in UTC with milliseconds (what log shippers parse without a custom
format); a text access line carries the request's duration and id like the JSON one.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from proxy.logs import JsonFormatter, TextFormatter, access_json_line, rfc3339

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def record(**extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "saga_sidecar.access", "msg": "GET /x 200", **extra})
    made.created = 1796500501.1239
    return made


def test_rfc3339_has_milliseconds_and_the_zone_and_round_trips() -> None:
    stamp = rfc3339(1796500501.1239)
    assert stamp == "2026-12-05T19:55:01.123Z"
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed == datetime(2026, 12, 5, 19, 55, 1, 123000, tzinfo=UTC)
    assert rfc3339(1796500501.9999) == "2026-12-05T19:55:01.999Z"


def test_json_lines_carry_an_rfc3339_ts_both_ways_they_are_built() -> None:
    formatted = json.loads(JsonFormatter().format(record()))
    direct = json.loads(
        access_json_line("GET", "/x", 200, 1.5, None, "bypass", "r-1", 1796500501.1239)
    )
    assert RFC3339_MS.match(formatted["ts"]) and formatted["ts"] == direct["ts"]


def test_a_text_access_line_carries_its_duration_and_request_id() -> None:
    line = TextFormatter().format(record(duration_ms=12.345, request_id="req-7"))
    assert line.endswith("GET /x 200 duration_ms=12.345 request_id=req-7")
    assert "duration_ms" not in TextFormatter().format(record())
