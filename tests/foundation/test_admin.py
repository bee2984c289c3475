"""The admin listener of a real sidecar: probes, Prometheus metrics, and the admin token."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest

if TYPE_CHECKING:
    from conftest import Sidecar, Upstream

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """A sidecar whose admin API needs a token (given through ``${ADMIN_TOKEN}``)."""
    return module_sidecar_process(
        {"upstream": {"url": upstream.url}, "admin": {"token": "${ADMIN_TOKEN:-}"}},
        env={"ADMIN_TOKEN": TOKEN},
    )


@pytest.fixture(scope="module")
def open_sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """A sidecar without an admin token."""
    return module_sidecar_process({"upstream": {"url": upstream.url}})


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, 0 when it is absent."""
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{rendered}}}" if labels else name) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def scrape(client: aiohttp.ClientSession, sidecar: Sidecar) -> str:
    async with client.get(f"{sidecar.admin_url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_200(
    client: aiohttp.ClientSession, open_sidecar: Sidecar, path: str
) -> None:
    async with client.get(f"{open_sidecar.admin_url}{path}") as response:
        assert response.status == 200
        assert (await response.json())["status"] in ("ok", "ready")


async def test_metrics_count_proxied_requests_by_method_and_status(
    client: aiohttp.ClientSession, open_sidecar: Sidecar
) -> None:
    before = await scrape(client, open_sidecar)
    for _ in range(3):
        async with client.get(f"{open_sidecar.url}/echo/m") as response:
            assert response.status == 200
    async with client.put(f"{open_sidecar.url}/echo/status?status=404", data=b"x") as r:
        assert r.status == 404
    after = await scrape(client, open_sidecar)
    get_200 = {"method": "GET", "status": "200"}
    put_404 = {"method": "PUT", "status": "404"}
    assert sample(after, "http_requests_total", **get_200) - sample(
        before, "http_requests_total", **get_200
    ) == pytest.approx(3)
    assert sample(after, "http_requests_total", **put_404) - sample(
        before, "http_requests_total", **put_404
    ) == pytest.approx(1)
    assert sample(after, "http_request_duration_seconds_count") - sample(
        before, "http_request_duration_seconds_count"
    ) == pytest.approx(4)
    assert 'http_request_duration_seconds_bucket{le="+Inf"}' in after


async def test_metrics_do_not_count_admin_traffic(
    client: aiohttp.ClientSession, open_sidecar: Sidecar
) -> None:
    before = await scrape(client, open_sidecar)
    async with client.get(f"{open_sidecar.admin_url}/healthz") as response:
        assert response.status == 200
    after = await scrape(client, open_sidecar)
    assert sample(after, "http_request_duration_seconds_count") == sample(
        before, "http_request_duration_seconds_count"
    )


async def test_unknown_admin_route_without_a_configured_token_is_a_404_problem(
    client: aiohttp.ClientSession, open_sidecar: Sidecar
) -> None:
    async with client.get(f"{open_sidecar.admin_url}/no-such-route") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_and_metrics_stay_open_when_a_token_is_set(
    client: aiohttp.ClientSession, sidecar: Sidecar, path: str
) -> None:
    async with client.get(f"{sidecar.admin_url}{path}") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "],
)
async def test_admin_route_without_the_right_token_is_a_401_problem(
    client: aiohttp.ClientSession, sidecar: Sidecar, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with client.get(f"{sidecar.admin_url}/sagas-or-anything", headers=headers) as r:
        assert r.status == 401
        assert r.content_type == "application/problem+json"
        problem = await r.json(content_type=None)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert problem["status"] == 401
    assert {"type", "title", "detail"} <= problem.keys()
    assert TOKEN not in str(problem)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_admin_route_with_the_right_token_passes_the_guard(
    client: aiohttp.ClientSession, sidecar: Sidecar, scheme: str
) -> None:
    headers = {"Authorization": f"{scheme} {TOKEN}"}
    async with client.get(f"{sidecar.admin_url}/sagas-or-anything", headers=headers) as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"


async def test_wrong_method_on_a_probe_is_a_405_problem_with_allow(
    client: aiohttp.ClientSession, open_sidecar: Sidecar
) -> None:
    async with client.post(f"{open_sidecar.admin_url}/healthz") as response:
        assert response.status == 405
        assert response.content_type == "application/problem+json"
        assert "GET" in response.headers["Allow"]


async def test_admin_token_is_never_logged(sidecar: Sidecar) -> None:
    assert TOKEN not in sidecar.log_text()
