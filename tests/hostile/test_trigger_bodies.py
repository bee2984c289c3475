"""Hostile saga trigger bodies and headers: refused with 400/413 and nothing started, or run to
the end; never a 5xx, never a saga the store cannot hold."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import pytest
from conftest import Sidecar
from foundation.rawhttp import Connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from saga_store.helpers import Target

from hostile.conftest import TRIGGER_BODY_LIMIT, admin_get, examples
from hostile.services import Recorder

ECHO = "/hostile/echo"
TERMINAL = ("completed", "compensated", "failed")

REFUSED_BODIES = {
    "nan": b'{"x": NaN}',
    "infinity": b'{"x": Infinity}',
    "minus-infinity": b'{"x": -Infinity}',
    "float-overflow": b'{"x": 1e400}',
    "nul-escape": b'{"x": "a\\u0000b"}',
    "lone-high-surrogate": b'{"x": "\\ud800"}',
    "lone-low-surrogate-in-a-key": b'{"\\udc00": 1}',
    "nested-65-deep": b'{"x": ' + b"[" * 64 + b"]" * 64 + b"}",
    "nested-30000-deep": b"[" * 30_000 + b"]" * 30_000,
    "5000-digit-integer": b'{"x": ' + b"9" * 5000 + b"}",
    "invalid-utf-8": b'{"x": "\xff\xfe"}',
    "not-json": b"{x: 1}",
    "truncated": b'{"x": [1, 2',
    "json-array": b"[1, 2]",
    "json-null": b"null",
    "json-string": b'"text"',
}

ACCEPTED_BODIES: dict[str, Any] = {
    "nested-63-deep": {"x": json.loads("[" * 62 + "]" * 62)},
    "4000-digit-integer": {"x": int("9" * 4000)},
    "tiny-float": {"x": 5e-324},
    "non-ascii": {"naïve": "日本語 🎉", "rtl": "\u202eevil"},
    "control-characters": {"x": "\x01\x1f\x7f\t\n"},
    "8k-string": {"x": "a" * 8192},
    "many-keys": {f"k{n}": n for n in range(2000)},
    "empty-object": {},
}


async def post_trigger(
    http: aiohttp.ClientSession, sidecar: Sidecar, body: bytes
) -> tuple[int, dict[str, str], str]:
    """POST ``body`` to the echo trigger; the status, headers and text of the answer."""
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{sidecar.url}{ECHO}", data=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def saga_status(http: aiohttp.ClientSession, sidecar: Sidecar, saga_id: str) -> str:
    status, view = await admin_get(http, sidecar, f"/sagas/{saga_id}")
    assert status == 200, view
    found: str = view["status"]
    return found


@pytest.mark.parametrize("body", REFUSED_BODIES.values(), ids=REFUSED_BODIES.keys())
async def test_body_no_store_can_hold_gets_400_and_starts_nothing(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, pg: Target, body: bytes
) -> None:
    before = await pg.count("saga_instances")
    status, headers, text = await post_trigger(http, saga_sidecar, body)
    assert status == 400, text
    assert headers["Content-Type"] == "application/problem+json"
    assert "Saga-Id" not in headers
    assert await pg.count("saga_instances") == before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_trigger_limit_gets_413_and_starts_nothing(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, pg: Target, chunked: bool
) -> None:
    before = await pg.count("saga_instances")
    body = json.dumps({"x": "a" * TRIGGER_BODY_LIMIT}).encode()

    async def pieces() -> Any:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    data: Any = pieces() if chunked else body
    async with http.post(f"{saga_sidecar.url}{ECHO}", data=data) as response:
        assert response.status == 413, await response.text()
        assert response.content_type == "application/problem+json"
    assert await pg.count("saga_instances") == before


@pytest.mark.parametrize("value", ACCEPTED_BODIES.values(), ids=ACCEPTED_BODIES.keys())
async def test_odd_but_storable_body_runs_and_reaches_the_step_unchanged(
    http: aiohttp.ClientSession,
    saga_sidecar: Sidecar,
    recorder: tuple[Recorder, str],
    value: Any,
) -> None:
    status, headers, text = await post_trigger(http, saga_sidecar, json.dumps(value).encode())
    assert status == 200, text
    saga_id = headers["Saga-Id"]
    assert await saga_status(http, saga_sidecar, saga_id) == "completed"
    sent = [c for c in recorder[0].calls_to("/echo") if c.key == f"{saga_id}:a:action"]
    assert [c.body for c in sent] == [value]


async def test_header_bytes_that_are_not_utf8_are_stored_replaced_and_the_saga_runs(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar
) -> None:
    connection = await Connection.open(saga_sidecar.url)
    try:
        await connection.send(
            b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nX-Odd: caf\xe9 \xff\xfe\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        response = await connection.response()
    finally:
        await connection.close()
    assert response.status == 200, response.body
    saga_id = response.headers["saga-id"]
    status, view = await admin_get(http, saga_sidecar, f"/sagas/{saga_id}")
    assert status == 200 and view["status"] == "completed"
    started = next(e for e in view["events"] if e["action"] == "started")
    assert started["detail"]["headers"]["x-odd"] == "caf\ufffd \ufffd\ufffd"


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON-like value, including what JSON text can say but no store can hold."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


def storable(value: Any) -> bool:
    """Whether every store can keep ``value`` (the rule the sidecar must apply)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(storable(v) for v in value)
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    return True


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=st.dictionaries(st.text(max_size=8), json_values(), max_size=4))
async def test_any_json_object_either_runs_to_completion_or_is_refused_with_400(
    http: aiohttp.ClientSession,
    saga_sidecar: Sidecar,
    recorder: tuple[Recorder, str],
    value: dict[str, Any],
) -> None:
    status, headers, text = await post_trigger(http, saga_sidecar, json.dumps(value).encode())
    if not storable(value):
        assert status == 400, text
        return
    assert status == 200, text
    saga_id = headers["Saga-Id"]
    assert await saga_status(http, saga_sidecar, saga_id) == "completed"
    sent = [c.body for c in recorder[0].calls_to("/echo") if c.key == f"{saga_id}:a:action"]
    assert sent == [value]


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.binary(max_size=200))
async def test_arbitrary_body_bytes_never_produce_a_5xx(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, body: bytes
) -> None:
    status, headers, text = await post_trigger(http, saga_sidecar, body)
    assert status in (200, 400), text
    if status == 200:
        assert await saga_status(http, saga_sidecar, headers["Saga-Id"]) in TERMINAL
