"""200 identical requests at once, spread over three sidecar processes sharing one Redis."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from conftest import Sidecar, Upstream

from idempotency.conftest import delete_prefix, with_prefix
from idempotency.upstream import CountingUpstream

REQUESTS = 200


@pytest.fixture(scope="module")
def storm(
    app_in_thread: Callable[..., Upstream],
    module_sidecar_process: Callable[..., Sidecar],
    redis_url: str,
) -> Iterator[tuple[CountingUpstream, list[Sidecar]]]:
    """A counting upstream and three sidecars in front of it, sharing Redis under one prefix."""
    upstream = CountingUpstream()
    served = app_in_thread(upstream.app())
    prefix = f"test-idem-storm-{uuid.uuid4().hex[:8]}"
    config = {
        "upstream": {"url": served.url, "timeout": "10s"},
        "idempotency": {
            "store": with_prefix(redis_url, prefix),
            "routes": [{"path": "/slow/1.0", "concurrent": "wait"}],
        },
        "log": {"level": "warning"},
    }
    sidecars = [module_sidecar_process(config) for _ in range(3)]
    yield upstream, sidecars
    asyncio.run(delete_prefix(redis_url, prefix))


async def fire(sidecars: list[Sidecar], path: str, key: str) -> list[tuple[int, bool, bytes]]:
    """Send ``REQUESTS`` identical requests at once, round-robin over ``sidecars``."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one(index: int) -> tuple[int, bool, bytes]:
            url = f"{sidecars[index % len(sidecars)].url}{path}"
            headers = {"Idempotency-Key": key}
            async with client.post(url, data=b'{"amount": 5}', headers=headers) as response:
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                return response.status, replayed, await response.read()

        return await asyncio.gather(*(one(index) for index in range(REQUESTS)))


async def conflicts_reported(sidecars: list[Sidecar]) -> float:
    """``idempotency_conflicts_total`` summed over the sidecars' /metrics."""
    total = 0.0
    async with aiohttp.ClientSession() as client:
        for sidecar in sidecars:
            async with client.get(f"{sidecar.admin_url}/metrics") as response:
                text = await response.text()
            match = re.search(r"^idempotency_conflicts_total (\S+)$", text, re.MULTILINE)
            total += float(match.group(1)) if match else 0.0
    return total


async def test_storm_with_reject_executes_once_and_refuses_the_rest_with_409(
    storm: tuple[CountingUpstream, list[Sidecar]],
) -> None:
    upstream, sidecars = storm
    replies = await fire(sidecars, "/slow/2", "storm-reject")
    statuses = Counter((status, replayed) for status, replayed, _ in replies)
    assert upstream.executions["/slow/2"] == 1
    assert statuses[(201, False)] == 1
    assert statuses[(409, False)] == REQUESTS - 1
    assert await conflicts_reported(sidecars) == REQUESTS - 1


async def test_storm_with_wait_executes_once_and_replays_to_everyone_else(
    storm: tuple[CountingUpstream, list[Sidecar]],
) -> None:
    upstream, sidecars = storm
    replies = await fire(sidecars, "/slow/1.0", "storm-wait")
    statuses = Counter((status, replayed) for status, replayed, _ in replies)
    assert upstream.executions["/slow/1.0"] == 1
    assert statuses == {(201, False): 1, (201, True): REQUESTS - 1}
    assert len({body for _, _, body in replies}) == 1
