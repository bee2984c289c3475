"""A service that answers a saga step with bytes no store can hold as JSON: the saga still ends.

Before the fix, each of these answers failed the step's write on PostgreSQL; the saga paused,
and recovery re-sent the step every tick, forever. Now a JSON answer that no store can hold is
kept as text (NUL characters, unpaired surrogates and undecodable bytes replaced by U+FFFD),
header values likewise, and the step is called once. A redirect is an answer, never followed:
a service cannot send a step's call (and its credentials) to another host.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import Sidecar

from hostile.conftest import admin_get
from hostile.services import RawAnswers, Recorder, raw_response

ANSWERS = {
    "nan": (raw_response(b'{"id": NaN}'), '{"id": NaN}'),
    "infinity": (raw_response(b'{"id": -Infinity}'), '{"id": -Infinity}'),
    "nul-escape": (raw_response(b'{"id": "\\u0000"}'), '{"id": "\\u0000"}'),
    "lone-surrogate": (raw_response(b'{"id": "\\udc00"}'), '{"id": "\\udc00"}'),
    "nul-in-text": (raw_response(b"a\x00b", b"text/plain"), "a\ufffdb"),
    "invalid-utf-8": (raw_response(b"caf\xe9", b"text/plain"), "caf\ufffd"),
    "nested-3000-deep": (raw_response(b"[" * 3000 + b"]" * 3000), "[" * 3000 + "]" * 3000),
}


async def run_answer_saga(
    http: aiohttp.ClientSession, sidecar: Sidecar, name: str
) -> tuple[int, str]:
    """Trigger the ``answer`` saga against ``/name``; its status and Saga-Id."""
    async with http.post(f"{sidecar.url}/hostile/answer", json={"name": name}) as response:
        await response.read()
        return response.status, response.headers["Saga-Id"]


@pytest.mark.parametrize("name", ANSWERS.keys())
async def test_unstorable_json_answer_is_kept_as_text_and_the_saga_completes(
    http: aiohttp.ClientSession,
    saga_sidecar: Sidecar,
    raw_answers: tuple[RawAnswers, str],
    name: str,
) -> None:
    server = raw_answers[0]
    response, stored_text = ANSWERS[name]
    server.answers[f"/{name}"] = response
    status, saga_id = await run_answer_saga(http, saga_sidecar, name)
    assert status == 200
    found, view = await admin_get(http, saga_sidecar, f"/sagas/{saga_id}")
    assert found == 200 and view["status"] == "completed"
    assert view["steps"][0]["result"]["body"] == stored_text
    await asyncio.sleep(0.5)  # a few recovery ticks: nothing re-sends the step
    assert server.hits[f"/{name}"] == 1


async def test_header_value_bytes_that_are_not_utf8_are_stored_replaced(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, raw_answers: tuple[RawAnswers, str]
) -> None:
    server = raw_answers[0]
    server.answers["/odd-header"] = raw_response(b"{}", extra=b"X-Odd: caf\xe9\xff\r\n")
    status, saga_id = await run_answer_saga(http, saga_sidecar, "odd-header")
    assert status == 200
    found, view = await admin_get(http, saga_sidecar, f"/sagas/{saga_id}")
    assert found == 200 and view["status"] == "completed"
    assert view["steps"][0]["result"]["headers"]["x-odd"] == "caf\ufffd\ufffd"


async def test_answer_over_1mib_is_stored_cut_to_1mib_as_text(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, raw_answers: tuple[RawAnswers, str]
) -> None:
    server = raw_answers[0]
    body = b'{"x": "' + b"a" * (2 * 1024**2) + b'"}'
    server.answers["/huge"] = raw_response(body)
    status, saga_id = await run_answer_saga(http, saga_sidecar, "huge")
    assert status == 200
    found, view = await admin_get(http, saga_sidecar, f"/sagas/{saga_id}")
    assert found == 200 and view["status"] == "completed"
    assert len(view["steps"][0]["result"]["body"]) == 1024**2


async def test_a_redirect_to_another_host_is_not_followed(
    http: aiohttp.ClientSession,
    saga_sidecar: Sidecar,
    raw_answers: tuple[RawAnswers, str],
    recorder: tuple[Recorder, str],
) -> None:
    elsewhere = f"{recorder[1]}/stolen"
    raw_answers[0].answers["/redirect"] = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + elsewhere.encode()
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    status, saga_id = await run_answer_saga(http, saga_sidecar, "redirect")
    assert status == 502
    found, view = await admin_get(http, saga_sidecar, f"/sagas/{saga_id}")
    assert found == 200 and view["steps"][0]["status"] == "failed"
    assert recorder[0].calls_to("/stolen") == []
