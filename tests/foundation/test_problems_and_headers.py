"""The problems middleware and the pure header helpers, on an in-process aiohttp server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import RequestBodyTimeout, UpstreamReset, UpstreamTimeout, UpstreamUnreachable
from proxy.headers import end_to_end, forwarded_header_lines
from proxy.problems import problems_middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(aiohttp_client: Any, handler: Handler) -> Any:
    app = web.Application(middlewares=[problems_middleware])
    app.router.add_get("/", handler)
    return await aiohttp_client(app)


def raising(exc: BaseException) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UpstreamUnreachable("upstream unreachable: refused"), 502),
        (UpstreamReset("upstream connection failed: reset"), 502),
        (UpstreamTimeout("upstream did not answer within 1s"), 504),
        (RequestBodyTimeout(1.0), 408),
        (web.HTTPNotFound(), 404),
        (RuntimeError("secret internals"), 500),
    ],
)
async def test_errors_become_problem_documents_without_internals(
    aiohttp_client: Any, exc: BaseException, status: int
) -> None:
    client = await serve(aiohttp_client, raising(exc))
    async with client.get("/") as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        problem = await response.json(content_type=None)
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()
    assert "secret internals" not in str(problem)
    assert "Traceback" not in str(problem)


async def test_method_not_allowed_keeps_its_allow_header(aiohttp_client: Any) -> None:
    client = await serve(aiohttp_client, raising(web.HTTPNotFound()))
    async with client.post("/") as response:
        assert response.status == 405
        assert response.content_type == "application/problem+json"
        assert response.headers["Allow"] == "GET,HEAD"


@pytest.mark.parametrize("chunked", [False, True])
async def test_failure_after_the_response_started_cuts_the_connection(
    aiohttp_client: Any, chunked: bool
) -> None:
    async def late_failure(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        raise RuntimeError("late failure")

    client = await serve(aiohttp_client, late_failure)
    async with client.get("/") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


def test_end_to_end_drops_hop_by_hop_and_connection_listed_headers() -> None:
    headers = CIMultiDict(
        [
            ("Connection", "keep-alive, X-A"),
            ("Connection", "x-b"),
            ("X-A", "1"),
            ("X-B", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic x"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Connection", "keep-alive"),
            ("Host", "example"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ]
    )
    kept = end_to_end(headers, drop=("host",))
    assert list(kept.items()) == [("X-Multi", "1"), ("X-Multi", "2")]


def test_trusted_forwarded_lines_append_the_peer_and_keep_earlier_proto_and_host() -> None:
    raw = (
        (b"Host", b"sidecar:8080"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Request-Id", b"from-client"),
        (b"Content-Length", b"5"),
        (b"Connection", b"keep-alive, X-Drop"),
        (b"X-Drop", b"1"),
        (b"X-Multi", b"1"),
        (b"X-Multi", b"2"),
    )
    lines = forwarded_header_lines(
        raw, client_ip="10.0.0.9", proto="http", request_id="r1", trust_forwarded=True
    )
    assert lines.split(b"\r\n") == [
        b"X-Forwarded-Proto: https",
        b"X-Multi: 1",
        b"X-Multi: 2",
        b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9",
        b"X-Forwarded-Host: sidecar:8080",
        b"X-Request-Id: r1",
        b"",
    ]


def test_untrusted_forwarded_lines_replace_what_the_client_said() -> None:
    raw = (
        (b"Host", b"sidecar:8080"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"bank.example"),
        (b"X-Real-IP", b"1.1.1.1"),
        (b"Forwarded", b"for=1.1.1.1"),
        (b"X-Kept", b"1"),
    )
    lines = forwarded_header_lines(raw, client_ip="::1", proto="http", request_id=None)
    assert lines.split(b"\r\n") == [
        b"X-Kept: 1",
        b"X-Forwarded-For: ::1",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: sidecar:8080",
        b"",
    ]


def test_trusted_forwarded_gets_this_hop_appended_in_rfc7239_form() -> None:
    raw = ((b"Host", b"sidecar:8080"), (b"Forwarded", b"for=1.1.1.1"))
    lines = forwarded_header_lines(
        raw, client_ip="::1", proto="https", request_id=None, trust_forwarded=True
    )
    assert b'Forwarded: for=1.1.1.1, for="[::1]";proto=https;host="sidecar:8080"\r\n' in lines


def test_forwarded_lines_without_a_peer_address_or_host_add_only_the_proto() -> None:
    lines = forwarded_header_lines(
        ((b"Accept", b"*/*"),), client_ip=None, proto="http", request_id=None
    )
    assert lines == b"Accept: */*\r\nX-Forwarded-Proto: http\r\n"
