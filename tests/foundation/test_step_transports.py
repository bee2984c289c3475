"""Step calls over both step transports: what a service receives and how answers are classified.

Every test runs ``StepCaller`` over ``AiohttpTransport`` (the CLI's) and over
``UpstreamStepTransport`` (the proxy's) against the same hand-driven ``RawServer``, so the two
are held to one behaviour: headers and body sent, the URL sent byte for byte, the bounded and
content-decoded body, header decoding, and the failure classes (not sent, sent without an
answer, timed out, with the same error text).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator, Callable

import pytest

from foundation.rawserver import WAIT, Handler, Peer, StartServer, response
from proxy.sagas.step_transport import UpstreamStepTransport
from saga_runner.caller import MAX_RESULT_BODY, Outcome, StepCaller, StepRequest
from saga_runner.transport import AiohttpTransport, StepTransport

SHORT = 0.25  # a step timeout that is meant to expire


@pytest.fixture(params=["aiohttp", "upstream"])
async def caller(request: pytest.FixtureRequest) -> AsyncIterator[StepCaller]:
    """A ``StepCaller`` over each transport, closed after the test."""
    transport: StepTransport = (
        AiohttpTransport() if request.param == "aiohttp" else UpstreamStepTransport()
    )
    yield StepCaller(transport)
    await transport.close()


def serving(*answers: bytes) -> Handler:
    """Answer the requests of a connection with ``answers`` in turn, then wait for EOF."""

    async def handle(peer: Peer) -> None:
        for answer in answers:
            if await peer.request() is None:
                return
            await peer.send(answer)
        await peer.until_eof()

    return handle


def header(request: bytes, name: str) -> list[str]:
    """The values of header ``name`` in a raw request."""
    pattern = rb"\r\n" + re.escape(name.encode()) + rb": *([^\r]*)"
    return [value.decode() for value in re.findall(pattern, request, flags=re.IGNORECASE)]


async def test_json_call_sends_its_headers_and_body_and_reads_the_answer(
    raw_server: StartServer, caller: StepCaller
) -> None:
    answer = response(
        "201 Created",
        b'{"id": 7}',
        "Content-Type: application/json",
        "Retry-After: 3",
        "X-Trace: a",
        "X-Trace: b",
    )
    server = await raw_server(serving(answer, answer))
    request = StepRequest(
        "POST",
        f"{server.url}/orders?x=1",
        {"Idempotency-Key": "s:one:action", "traceparent": "00-abc-def-01", "Saga-Id": "s"},
        {"amount": 5},
    )

    result = await caller.call(request, success=None, seconds=WAIT)
    again = await caller.call(request, success=[200], seconds=WAIT)

    assert (result.outcome, result.status, result.body) == (Outcome.SUCCESS, 201, {"id": 7})
    assert (result.retry_after, result.error, result.sent) == (3.0, None, True)
    assert result.headers["content-type"] == "application/json"
    assert result.headers["x-trace"] == "b"
    assert again.outcome is Outcome.PERMANENT
    assert len(server.peers) == 1  # kept alive
    sent = server.peers[0].requests[0]
    assert sent.startswith(b"POST /orders?x=1 HTTP/1.1\r\n")
    assert sent.endswith(b"\r\n\r\n" + json.dumps({"amount": 5}).encode())
    assert header(sent, "Idempotency-Key") == ["s:one:action"]
    assert header(sent, "traceparent") == ["00-abc-def-01"]
    assert header(sent, "Content-Type") == ["application/json"]
    assert header(sent, "Accept") == ["*/*"]
    assert header(sent, "Accept-Encoding") == ["gzip, deflate"]
    assert len(header(sent, "User-Agent")) == 1


async def test_url_is_sent_byte_for_byte_with_the_services_prefix(
    raw_server: StartServer, caller: StepCaller
) -> None:
    server = await raw_server(serving(response("204 No Content")))
    url = f"{server.url}/api/v1/orders/%2E%2E/x%20y?q=a%2Fb"

    result = await caller.call(StepRequest("DELETE", url), success=None, seconds=WAIT)

    assert (result.status, result.body) == (204, None)
    sent = server.peers[0].requests[0]
    assert sent.startswith(b"DELETE /api/v1/orders/%2E%2E/x%20y?q=a%2Fb HTTP/1.1\r\n")
    assert header(sent, "Content-Length") == ["0"]


async def test_user_info_in_the_url_is_sent_as_basic_credentials(
    raw_server: StartServer, caller: StepCaller
) -> None:
    server = await raw_server(serving(response()))
    url = server.url.replace("http://", "http://us%40er:p%3Ass@")

    await caller.call(StepRequest("GET", url + "/"), success=None, seconds=WAIT)

    assert header(server.peers[0].requests[0], "Authorization") == ["Basic dXNAZXI6cDpzcw=="]


async def test_body_is_cut_at_the_limit_however_it_arrives(
    raw_server: StartServer, caller: StepCaller
) -> None:
    size = MAX_RESULT_BODY + 1000

    async def in_pieces(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size
        await peer.send(head, b"a" * 1000, b"b" * (size - 1000))
        await peer.until_eof()

    server = await raw_server(in_pieces)

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=WAIT)

    assert result.body == "a" * 1000 + "b" * (MAX_RESULT_BODY - 1000)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_body_is_decoded(
    raw_server: StartServer, caller: StepCaller, encoding: str
) -> None:
    plain = json.dumps({"items": list(range(2000))}).encode()
    if encoding == "gzip":
        packed = gzip.compress(plain)
    else:
        packer = zlib.compressobj(wbits=zlib.MAX_WBITS if encoding == "deflate" else -15)
        packed = packer.compress(plain) + packer.flush()
    name = encoding.removeprefix("raw-")
    server = await raw_server(serving(response("200 OK", packed, f"Content-Encoding: {name}")))

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=WAIT)

    assert result.body == {"items": list(range(2000))}
    assert result.headers["content-encoding"] == name


async def test_undecodable_body_is_a_retryable_failure_after_sending(
    raw_server: StartServer, caller: StepCaller
) -> None:
    server = await raw_server(serving(response("200 OK", b"not gzip", "Content-Encoding: gzip")))

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=WAIT)

    assert (result.outcome, result.status, result.sent) == (Outcome.RETRYABLE, None, True)
    assert result.error is not None and result.error.startswith("connection error: ")


async def test_utf8_header_values_are_decoded(raw_server: StartServer, caller: StepCaller) -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9 \xff\r\nContent-Length: 0\r\n\r\n"
    server = await raw_server(serving(answer))

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=WAIT)

    assert result.headers["x-name"] == "café \ufffd"


async def test_refused_connection_is_not_sent(
    free_port: Callable[[], int], caller: StepCaller
) -> None:
    port = free_port()

    result = await caller.call(
        StepRequest("POST", f"http://127.0.0.1:{port}/x", body={}), success=None, seconds=WAIT
    )

    assert (result.outcome, result.status, result.sent) == (Outcome.RETRYABLE, None, False)
    assert result.error is not None
    assert re.fullmatch(r"connection failed: \[Errno 111\] .*", result.error)


async def test_connection_closed_without_an_answer_is_sent(
    raw_server: StartServer, caller: StepCaller
) -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.request()
        await peer.close()

    server = await raw_server(hang_up)

    result = await caller.call(StepRequest("POST", server.url + "/"), success=None, seconds=WAIT)

    assert (result.outcome, result.status, result.sent) == (Outcome.RETRYABLE, None, True)
    assert result.error is not None and result.error.startswith("connection error: ")


@pytest.mark.parametrize("stall", ["head", "body"])
async def test_deadline_covers_the_whole_exchange(
    raw_server: StartServer, caller: StepCaller, stall: str
) -> None:
    async def slow(peer: Peer) -> None:
        await peer.request()
        if stall == "body":
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.until_eof()

    server = await raw_server(slow)

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=SHORT)

    assert (result.outcome, result.status, result.sent) == (Outcome.RETRYABLE, None, True)
    assert result.error == f"timed out after {SHORT:g}s"
    async with asyncio.timeout(WAIT):
        await server.peers[0].ended.wait()  # the connection was dropped, not pooled


async def test_closed_transport_keeps_no_connection(raw_server: StartServer) -> None:
    server = await raw_server(serving(response()))
    transport = UpstreamStepTransport()
    caller = StepCaller(transport)

    result = await caller.call(StepRequest("GET", server.url + "/"), success=None, seconds=WAIT)
    await transport.close()

    assert result.status == 200
    async with asyncio.timeout(WAIT):
        await server.peers[0].ended.wait()
