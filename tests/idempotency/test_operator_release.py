"""An operator releases one key: `DELETE /idempotency/{key}` (admin) and the CLI, for real."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import aiohttp
from conftest import REPO_ROOT, Sidecar

from idempotency.upstream import CountingUpstream

TENANT = "Bearer tenant-a"


async def charge(sidecar: Sidecar, key: str, auth: str | None = None) -> int:
    """POST /charge with ``key`` (and an Authorization scope header); the status."""
    headers = {"Idempotency-Key": key, **({"Authorization": auth} if auth else {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sidecar.url}/charge", data=b"{}", headers=headers) as response,
    ):
        return response.status


async def delete(sidecar: Sidecar, key: str, headers: dict[str, str] | None = None) -> int:
    """DELETE /idempotency/{key} on the admin listener; the status."""
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{sidecar.admin_url}/idempotency/{key}", headers=headers) as response,
    ):
        return response.status


def start(launch: Callable[..., Sidecar], url: str, store: str) -> Sidecar:
    """A sidecar scoping keys by Authorization."""
    return launch(
        {
            "upstream": {"url": url},
            "idempotency": {"store": store, "scope_headers": ["Authorization"]},
        }
    )


async def test_admin_delete_releases_a_scoped_key_named_by_its_scope_header_values(
    sidecar_process: Callable[..., Sidecar],
    counting_upstream: tuple[CountingUpstream, str],
    redis_store_url: str,
) -> None:
    upstream, url = counting_upstream
    sidecar = await asyncio.to_thread(start, sidecar_process, url, redis_store_url)
    assert await charge(sidecar, "op-1", TENANT) == 201
    assert await charge(sidecar, "op-2") == 201
    assert await delete(sidecar, "op-1") == 404  # the unscoped key holds nothing
    assert await delete(sidecar, "op-1", {"X-Scope-Authorization": "Bearer other"}) == 404
    assert await delete(sidecar, "op-1", {"X-Scope-Authorization": TENANT}) == 204
    assert await delete(sidecar, "op-1", {"X-Scope-Authorization": TENANT}) == 404
    assert await delete(sidecar, "op-2") == 204
    assert await charge(sidecar, "op-1", TENANT) == 201
    assert upstream.executions["/charge"] == 3  # the released key executed again


async def test_cli_releases_a_scoped_key(
    sidecar_process: Callable[..., Sidecar],
    counting_upstream: tuple[CountingUpstream, str],
    redis_store_url: str,
) -> None:
    upstream, url = counting_upstream
    sidecar = await asyncio.to_thread(start, sidecar_process, url, redis_store_url)
    assert await charge(sidecar, "cli-1", TENANT) == 201

    def release(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "proxy", "idempotency", "release", "cli-1", *extra]
        command += ["--config", str(sidecar.config_path)]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)

    assert (await asyncio.to_thread(release)).returncode == 1
    done = await asyncio.to_thread(release, "--scope", f"Authorization={TENANT}")
    assert done.returncode == 0, done.stderr
    assert "released" in done.stdout
    assert await charge(sidecar, "cli-1", TENANT) == 201
    assert upstream.executions["/charge"] == 2
