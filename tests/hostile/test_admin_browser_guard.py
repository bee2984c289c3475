"""A browser cannot drive an admin listener that has no token: no CSRF, no DNS rebinding.

Without ``admin.token`` the admin API trusts whoever can reach 127.0.0.1, and a web page in the
operator's browser can: a cross-site ``text/plain`` form POST needs no CORS preflight, and a DNS
rebinding page talks to the listener under its own host name. The sidecar here runs sagas on
SQLite, without a token, with ``admin.allowed_hosts: [admin.internal]``. A request that reaches
the retry handler answers 404 (no such saga); one the guard refuses never gets there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import Sidecar
from yarl import URL

from proxy.admin.guard import host_allowed, refusal
from proxy.config import LoadedConfig, SidecarConfig
from proxy.keys import CONFIG

SAGA = {
    "name": "noop",
    "trigger": {"method": "POST", "path": "/noop"},
    "steps": [
        {"name": "a", "action": {"service": "app", "method": "POST", "path": "/a"}},
    ],
}
RETRY = "/sagas/no-such-saga/retry"


@pytest.fixture(scope="module")
def admin_sidecar(
    module_sidecar_process: Callable[..., Sidecar], tmp_path_factory: pytest.TempPathFactory
) -> Sidecar:
    """A sidecar with sagas and a token-less admin listener on 127.0.0.1."""
    workdir: Path = tmp_path_factory.mktemp("admin-guard")
    (workdir / "noop.yaml").write_text(yaml.safe_dump(SAGA), encoding="utf-8")
    return module_sidecar_process(
        {
            "upstream": {"url": "http://127.0.0.1:9"},
            "services": {"app": "http://127.0.0.1:9"},
            "admin": {"allowed_hosts": ["admin.internal"]},
            "sagas": {
                "store": f"sqlite:///{workdir / 'sagas.db'}",
                "definitions": [str(workdir / "noop.yaml")],
            },
        }
    )


async def call(
    sidecar: Sidecar, method: str, path: str, headers: dict[str, str], data: Any = None
) -> tuple[int, str, str]:
    """Status, content type and body of one admin request."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sidecar.admin_url + path, headers=headers, data=data) as response,
    ):
        return response.status, response.content_type, await response.text()


def own_origin(sidecar: Sidecar) -> str:
    return str(URL(sidecar.admin_url).origin())


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_state_changing_call_without_a_json_body_type_is_415(
    admin_sidecar: Sidecar, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, media, body = await call(admin_sidecar, "POST", RETRY, headers, b'{"force": true}')
    assert (status, media) == (415, "application/problem+json")
    assert "application/json" in body


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:1"},
    ],
    ids=["foreign-origin", "null-origin", "cross-site", "same-site", "other-port"],
)
async def test_a_cross_site_state_changing_call_is_403(
    admin_sidecar: Sidecar, headers: dict[str, str]
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    status, media, _ = await call(admin_sidecar, "POST", RETRY, headers, b"{}")
    assert (status, media) == (403, "application/problem+json")


@pytest.mark.parametrize("path", ["/sagas", "/dashboard", RETRY, "/metrics"])
async def test_a_foreign_host_name_is_421(admin_sidecar: Sidecar, path: str) -> None:
    headers = {"Host": "rebind.evil.example:9901", "Content-Type": "application/json"}
    method = "POST" if path == RETRY else "GET"
    status, media, _ = await call(admin_sidecar, method, path, headers, b"{}" if path else None)
    assert (status, media) == (421, "application/problem+json")


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:9901", "127.0.0.1:9901", "[::1]:9901", "admin.internal"]
)
async def test_loopback_addresses_and_allowed_host_names_are_served(
    admin_sidecar: Sidecar, host: str
) -> None:
    status, _, _ = await call(admin_sidecar, "GET", "/sagas", {"Host": host})
    assert status == 200


async def test_the_dashboards_own_same_origin_json_call_reaches_the_handler(
    admin_sidecar: Sidecar,
) -> None:
    headers = {
        "Content-Type": "application/json",
        "Origin": own_origin(admin_sidecar),
        "Sec-Fetch-Site": "same-origin",
    }
    status, _, body = await call(admin_sidecar, "POST", RETRY, headers, b"{}")
    assert status == 404, body


async def test_a_cli_style_json_call_without_browser_headers_reaches_the_handler(
    admin_sidecar: Sidecar,
) -> None:
    status, _, body = await call(
        admin_sidecar, "POST", RETRY, {"Content-Type": "application/json; charset=utf-8"}, b""
    )
    assert status == 404, body


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("app.localhost.:80", True),
        ("127.0.0.1", True),
        ("10.1.2.3:9901", True),
        ("[::1]:9901", True),
        ("::1", True),
        ("Admin.Internal:9901", True),
        ("admin.internal.evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, ("admin.internal",)) is allowed


def test_with_a_token_any_host_name_is_served_but_cross_site_posts_are_not() -> None:
    config = SidecarConfig.model_validate(
        {"upstream": {"url": "http://app"}, "admin": {"token": "t"}}
    )
    app = web.Application()
    app[CONFIG] = LoadedConfig(path=Path("sidecar.yaml"), config=config)
    read = make_mocked_request("GET", "/sagas", headers={"Host": "evil.example"}, app=app)
    assert refusal(read) is None
    post = make_mocked_request(
        "POST", "/sagas/x/retry", headers={"Host": "evil.example", "Origin": "http://x"}, app=app
    )
    refused = refusal(post)
    assert refused is not None and refused.status == 403


def test_allowed_hosts_must_be_bare_host_names() -> None:
    with pytest.raises(ValueError, match="host name"):
        SidecarConfig.model_validate(
            {"upstream": {"url": "http://app"}, "admin": {"allowed_hosts": ["http://a:80"]}}
        )
