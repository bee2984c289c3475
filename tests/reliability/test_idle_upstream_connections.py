"""An app that closes idle keep-alive connections after 1 s, under steady keyed POSTs with gaps
around 1 s, through a real sidecar: no request the app never saw is answered (and stored) as 502.

The app closes a connection the sidecar may be about to send on; the request then meets a
closed socket before any byte of it was read. The sidecar must neither reuse a connection the
app closed, nor answer such a request 502 (under ``unknown_outcome: hold`` that 502 would be
replayed for the key's whole TTL): it sends the request again, once, on a new connection.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from conftest import Sidecar, Upstream

from reliability.services import KeyedApp

APP_IDLE_CLOSE = 1.0
WORKERS = 6
DURATION = 12.0


@pytest.fixture
def closing_app(app_in_thread: Callable[..., Upstream]) -> Iterator[tuple[KeyedApp, str]]:
    """A ``KeyedApp`` whose server closes a connection idle for 1 s (as Node and uvicorn do)."""
    app = KeyedApp()
    upstream = app_in_thread(app.app(), keepalive_timeout=APP_IDLE_CLOSE)
    yield app, upstream.url
    upstream.stop()


async def _worker(
    http: aiohttp.ClientSession, url: str, until: float, rng: random.Random
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    while time.monotonic() < until:
        key = uuid.uuid4().hex
        async with http.post(
            f"{url}/charges", data=b'{"n": 1}', headers={"Idempotency-Key": key}
        ) as response:
            await response.read()
            statuses[response.status] += 1
        # The app's close lands within a millisecond or so of 1 s after its answer: aim there.
        await asyncio.sleep(rng.uniform(APP_IDLE_CLOSE - 0.003, APP_IDLE_CLOSE + 0.004))
    return statuses


async def test_no_502_when_the_app_closes_idle_connections(
    sidecar_process: Callable[..., Sidecar], closing_app: tuple[KeyedApp, str]
) -> None:
    app, upstream_url = closing_app
    sidecar = sidecar_process(
        {
            "upstream": {"url": upstream_url, "timeout": "5s"},
            "idempotency": {"store": "memory://", "unknown_outcome": "hold"},
        }
    )
    until = time.monotonic() + DURATION
    # The workers keep in step (the same gaps), so each round they take as many pooled
    # connections, every one idle for about the gap.
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        results = await asyncio.gather(
            *(_worker(http, sidecar.url, until, random.Random(7)) for _ in range(WORKERS))
        )
    statuses = sum(results, Counter())
    assert sum(statuses.values()) >= WORKERS * 5
    assert statuses == Counter({201: sum(statuses.values())}), statuses
    assert all(count == 1 for key, count in app.snapshot().items() if key), "executed twice"
