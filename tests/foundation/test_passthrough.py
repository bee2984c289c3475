"""A real sidecar subprocess in front of a real upstream: what arrives is what was sent.

Methods, raw paths and query strings, repeated headers, hop-by-hop stripping in both directions,
``X-Forwarded-*`` and ``X-Request-Id``, and the access log line of a proxied request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from yarl import URL

from foundation.rawhttp import Connection

if TYPE_CHECKING:
    from conftest import Sidecar, Upstream

REQUEST_HOP_HEADERS = {
    "Connection": "keep-alive, X-Hop-Req",
    "X-Hop-Req": "listed in Connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
    "Proxy-Connection": "keep-alive",
    "X-Kept": "yes",
}
HOP_NAMES = {
    "connection",
    "x-hop-req",
    "x-hop-resp",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
}


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """One sidecar for the module, in front of the echo upstream."""
    return module_sidecar_process({"upstream": {"url": upstream.url, "timeout": "5s"}})


def header_values(report: dict[str, Any], name: str) -> list[str]:
    """Values of every raw header line named ``name`` the upstream received."""
    return [v for k, v in report["headers"] if k.lower() == name.lower()]


async def echo(
    client: aiohttp.ClientSession, sidecar: Sidecar, raw_path: str, **kwargs: Any
) -> dict[str, Any]:
    url = URL(sidecar.url + raw_path, encoded=True)
    async with client.get(url, **kwargs) as response:
        assert response.status == 200, await response.text()
        report: dict[str, Any] = await response.json()
        return report


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_reaches_the_upstream_with_its_body(
    client: aiohttp.ClientSession, sidecar: Sidecar, method: str
) -> None:
    async with client.request(method, f"{sidecar.url}/echo/m", data=b"payload") as response:
        assert response.status == 200
        report = await response.json()
    assert report["method"] == method
    assert report["body_length"] == len(b"payload")


async def test_head_is_forwarded_and_answered_without_a_body(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.head(f"{sidecar.url}/echo/h") as response:
        assert response.status == 200
        assert response.headers["X-Seen-Method"] == "HEAD"
        assert await response.read() == b""


@pytest.mark.parametrize(
    "raw_path",
    [
        "/echo/q?a=%2F&b=%20&c=a+b&d=%C3%A9%E2%82%AC&e=%2B&f=&g",
        "/echo/files/a%2Fb/c%20d/%7Euser;v=1?x=%25",
        "/echo//double//slash/.dots?q=%3D%26%3F",
        "/echo/bad-escape?a=%zz&b=100%",
    ],
)
async def test_path_and_query_arrive_byte_identical(
    client: aiohttp.ClientSession, sidecar: Sidecar, raw_path: str
) -> None:
    report = await echo(client, sidecar, raw_path)
    assert report["raw_path"] == raw_path


async def test_absolute_form_request_target_is_forwarded_as_its_path_and_query(
    sidecar: Sidecar,
) -> None:
    connection = await Connection.open(sidecar.url)
    try:
        await connection.send(
            b"GET http://example.com/echo/abs%2Fx?q=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        response = await connection.response()
    finally:
        await connection.close()
    assert response.status == 200
    assert json.loads(response.body)["raw_path"] == "/echo/abs%2Fx?q=%20"


async def test_upstream_gets_only_the_headers_the_client_sent_plus_forwarding_ones(
    sidecar: Sidecar, upstream: Upstream
) -> None:
    connection = await Connection.open(sidecar.url)
    try:
        await connection.send(b"GET /echo/bare HTTP/1.1\r\nHost: bare.example\r\nX-One: 1\r\n\r\n")
        response = await connection.response()
    finally:
        await connection.close()
    received = dict(json.loads(response.body)["headers"])
    assert set(received) == {
        "Host",
        "X-One",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Request-Id",
    }
    assert received["Host"] == URL(upstream.url).raw_authority
    assert received["X-Forwarded-Host"] == "bare.example"


async def test_repeated_header_lines_arrive_as_separate_lines(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    headers = [("X-Multi", "one"), ("X-Multi", "two, three"), ("Accept", "a/b")]
    report = await echo(client, sidecar, "/echo/multi", headers=headers)
    assert header_values(report, "X-Multi") == ["one", "two, three"]


async def test_hop_by_hop_request_headers_are_not_forwarded(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    report = await echo(client, sidecar, "/echo/hop", headers=REQUEST_HOP_HEADERS)
    received = {name.lower() for name, _ in report["headers"]}
    assert received & (HOP_NAMES - {"connection"}) == set()
    assert all("x-hop-req" not in v.lower() for v in header_values(report, "Connection"))
    assert header_values(report, "X-Kept") == ["yes"]


async def test_hop_by_hop_response_headers_are_not_relayed(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/hop") as response:
        assert response.status == 200
        assert await response.text() == "hop"
        names = {name.lower() for name in response.headers}
        connection = response.headers.getall("Connection", [])
    assert names & (HOP_NAMES - {"connection"}) == set()
    assert all("x-hop-resp" not in value.lower() for value in connection)
    assert response.headers["X-Kept"] == "yes"


async def test_x_forwarded_headers_are_the_sidecars_own_by_default(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    headers = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "198.51.100.2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "shop.example"),
    ]
    report = await echo(client, sidecar, "/echo/xff", headers=headers)
    assert header_values(report, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(report, "X-Forwarded-Proto") == ["http"]
    assert header_values(report, "X-Forwarded-Host") == [URL(sidecar.url).raw_authority]


async def test_upstream_sees_the_upstream_host_not_the_sidecars(
    client: aiohttp.ClientSession, sidecar: Sidecar, upstream: Upstream
) -> None:
    report = await echo(client, sidecar, "/echo/host")
    assert header_values(report, "Host") == [URL(upstream.url).raw_authority]


async def test_x_request_id_is_forwarded_unchanged(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    report = await echo(client, sidecar, "/echo/rid", headers={"X-Request-Id": "req-42"})
    assert header_values(report, "X-Request-Id") == ["req-42"]


async def test_x_request_id_is_generated_when_absent_and_logged(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    report = await echo(client, sidecar, "/echo/no-rid?tag=generated")
    (request_id,) = header_values(report, "X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    line = await wait_for_access_log(sidecar, request_id)
    assert line["method"] == "GET"
    assert line["path"] == "/echo/no-rid"
    assert line["status"] == 200
    assert line["idempotency"] == "bypass"
    assert line["upstream_ms"] is not None and line["duration_ms"] >= line["upstream_ms"]


async def test_traceparent_is_forwarded_unchanged(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    report = await echo(client, sidecar, "/echo/trace", headers={"traceparent": traceparent})
    assert header_values(report, "traceparent") == [traceparent]


@pytest.mark.parametrize("status", [201, 302, 404, 418, 500, 503])
async def test_upstream_status_reason_and_headers_are_relayed(
    client: aiohttp.ClientSession, sidecar: Sidecar, status: int
) -> None:
    url = f"{sidecar.url}/echo/status?status={status}"
    async with client.get(url, allow_redirects=False) as response:
        report = await response.json(content_type=None)
        assert response.status == status
        assert response.reason == "Custom Reason"
        assert response.headers["Location"] == "/elsewhere"
        assert response.headers["X-Seen-Method"] == "GET"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert report["method"] == "GET"


async def test_large_upstream_response_header_is_relayed(sidecar: Sidecar) -> None:
    async with (
        aiohttp.ClientSession(max_field_size=65536) as client,
        client.get(f"{sidecar.url}/big-header?size=20000") as response,
    ):
        assert response.status == 200
        assert response.headers["X-Big"] == "b" * 20000


async def test_upstream_cookies_are_relayed_but_never_kept_between_requests(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/echo/set?status=200") as response:
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as other_client:
        report = await echo(other_client, sidecar, "/echo/after-cookies")
    assert header_values(report, "Cookie") == []


async def wait_for_access_log(sidecar: Sidecar, request_id: str) -> dict[str, Any]:
    """The access log line of ``request_id`` (logged just after the response is sent)."""
    for _ in range(100):
        for record in sidecar.log_records():
            if record.get("logger") == "saga_sidecar.access" and (
                record.get("request_id") == request_id
            ):
                return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"no access log line for {request_id}:\n{sidecar.log_text()}")
