"""Hostile input on the admin listener: tokens, saga ids and list filters never cause a 5xx."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import aiohttp
import pytest
from conftest import Sidecar
from foundation.rawhttp import Connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.conftest import ADMIN_TOKEN, admin_get, examples

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)


async def raw_admin_get(sidecar: Sidecar, target: bytes, authorization: bytes) -> int:
    """GET ``target`` on the admin listener with raw ``Authorization`` bytes; the status."""
    connection = await Connection.open(sidecar.admin_url)
    try:
        await connection.send(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        return (await connection.response()).status
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe",
        b"Bearer caf\xc3\xa9",
        b"Bearer " + b"x" * 8000,
        b"Basic Zm9vOmJhcg==",
        b"",
    ],
    ids=["not-utf-8", "non-ascii", "8k-token", "basic", "empty"],
)
async def test_wrong_or_undecodable_token_is_401_never_a_500(
    saga_sidecar: Sidecar, authorization: bytes
) -> None:
    assert await raw_admin_get(saga_sidecar, b"/sagas", authorization) == 401


async def test_the_right_token_still_opens_the_api(saga_sidecar: Sidecar) -> None:
    token = f"Bearer {ADMIN_TOKEN}".encode()
    assert await raw_admin_get(saga_sidecar, b"/sagas", token) == 200


@pytest.mark.parametrize("saga_id", ["\x00", "a\x00b", "\udcff", "..", "%2e%2e", "x" * 2000])
async def test_saga_id_no_row_can_have_is_a_404(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, saga_id: str
) -> None:
    ident = quote(saga_id.encode("utf-8", "surrogatepass"), safe="")
    status, problem = await admin_get(http, saga_sidecar, f"/sagas/{ident}")
    assert status == 404, problem


@pytest.mark.parametrize("name", ["business_id", "name"])
async def test_list_filter_no_row_can_match_is_an_empty_page(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, name: str
) -> None:
    status, page = await admin_get(http, saga_sidecar, f"/sagas?{name}=a%00b")
    assert (status, page) == (200, {"items": [], "next_cursor": None})


@settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "name", "business_id", "limit", "before", "saga"]),
        any_text,
        max_size=4,
    ),
    saga_id=any_text,
    action=st.sampled_from(["", "/retry", "/abort"]),
)
async def test_any_query_or_saga_id_is_answered_without_a_5xx(
    http: aiohttp.ClientSession,
    saga_sidecar: Sidecar,
    params: dict[str, str],
    saga_id: str,
    action: str,
) -> None:
    query = urlencode(params, encoding="utf-8", errors="surrogatepass")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ident = quote(saga_id.encode("utf-8", "surrogatepass"), safe="")
    requests = [
        ("GET", f"/sagas?{query}"),
        ("GET", f"/dashboard?{query}"),
        ("GET" if not action else "POST", f"/sagas/{ident}{action}"),
    ]
    for method, path in requests:
        url = f"{saga_sidecar.admin_url}{path}"
        async with http.request(method, url, headers=headers) as response:
            assert response.status < 500, (method, path, await response.text())
