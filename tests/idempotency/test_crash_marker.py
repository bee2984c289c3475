"""A sidecar killed while a covered request is with the app never lets a retry execute it again.

Real ``saga-sidecar serve`` processes on the shared Redis: the first is SIGKILLed while the app
holds the request; after the lock's lease a second sidecar gets the retry. Under ``hold`` it
answers a stored 504 "outcome unknown" problem, replayed to every later duplicate; under
``release`` the retry executes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import Sidecar

from idempotency.upstream import CountingUpstream

KEY = "Idempotency-Key"


async def post(url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """POST with ``key``; status, headers, body."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b'{"n": 1}', headers={KEY: key}) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def kill_while_with_the_app(
    start: Callable[..., Sidecar], upstream: CountingUpstream, config: dict[str, Any]
) -> None:
    """Send a slow request through a sidecar and SIGKILL it while the app holds it."""
    doomed = await asyncio.to_thread(start, config)
    first = asyncio.create_task(post(f"{doomed.url}/slow/5", "crash-1"))
    await upstream.wait_started("/slow/5")
    doomed.signal(signal.SIGKILL)
    doomed.process.wait(5)
    with pytest.raises(aiohttp.ClientError):
        await first
    await asyncio.sleep(1.3)  # past the 1 s lease


@pytest.mark.parametrize("policy", ["hold", "release"])
async def test_a_retry_after_a_killed_sidecar_gets_the_unknown_outcome_treatment(
    sidecar_process: Callable[..., Sidecar],
    counting_upstream: tuple[CountingUpstream, str],
    redis_store_url: str,
    policy: str,
) -> None:
    upstream, url = counting_upstream
    config = {
        "upstream": {"url": url, "timeout": "10s"},
        "idempotency": {
            "store": redis_store_url,
            "lock_timeout": "1s",
            "unknown_outcome": policy,
        },
    }
    await kill_while_with_the_app(sidecar_process, upstream, config)
    survivor = await asyncio.to_thread(sidecar_process, config)
    status, headers, body = await post(f"{survivor.url}/slow/5", "crash-1")
    if policy == "release":
        assert status == 201
        assert upstream.executions["/slow/5"] == 2
        return
    assert status == 504, body
    assert b"idempotency-outcome-unknown" in body
    assert headers.get("Idempotent-Replayed") == "true"
    again = await post(f"{survivor.url}/slow/5", "crash-1")
    assert again[0] == 504 and again[2] == body
    assert upstream.executions["/slow/5"] == 1
