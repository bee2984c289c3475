"""Redis killed (SIGKILL) and restarted under a steady load of covered requests.

The sidecar is a real process in front of a counting app; its Redis is a private server this
test kills and starts again on the same port (without persistence: every record is lost). Every
worker sends a request with a fresh key and retries it at once, all through the outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from conftest import Sidecar
from idempotency.conftest import RedisServer, with_prefix

from reliability.conftest import eventually, phase
from reliability.load import KeyedLoad, ReadinessWatch, Shot
from reliability.services import KeyedApp


def kill(server: RedisServer) -> None:
    """``kill -9`` the Redis server."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    server.process = None


async def run_outage(
    http: aiohttp.ClientSession, sidecar: Sidecar, server: RedisServer
) -> tuple[list[Shot], list[tuple[float, int, str]], float, float]:
    """Load, kill Redis, start it again, load on; the shots, readiness samples, kill and
    restart times."""
    load = KeyedLoad(http, sidecar.url)
    watch = ReadinessWatch(http, sidecar.admin_url)
    load.start()
    watch.start()
    await asyncio.sleep(phase(1.0))
    killed = time.monotonic()
    kill(server)
    await asyncio.sleep(phase(1.5))
    restarted = time.monotonic()
    await server.start()
    await eventually(
        lambda: any(s.replayed and s.started > restarted for s in load.shots),
        "a replay after the restart",
    )
    await asyncio.sleep(phase(1.0))
    return await load.stop(), await watch.stop(), killed, restarted


def assert_readiness_followed_the_outage(
    samples: list[tuple[float, int, str]], killed: float, restarted: float
) -> None:
    before = [status for at, status, _ in samples if at < killed]
    during = [(status, body) for at, status, body in samples if killed + 0.5 < at < restarted]
    assert before and set(before) == {200}
    assert during and all(s == 503 and "idempotency_store" in b for s, b in during), during
    assert samples[-1][1] == 200, "readiness did not recover"


@pytest.mark.parametrize("on_store_error", ["reject", "pass"])
async def test_redis_killed_under_load_never_executes_a_protected_request_twice(
    sidecar_process: Callable[..., Sidecar],
    keyed: tuple[KeyedApp, str],
    redis_server: Callable[[], Awaitable[RedisServer]],
    http: aiohttp.ClientSession,
    on_store_error: str,
) -> None:
    app, url = keyed
    server = await redis_server()
    store = with_prefix(server.url, "reliability")
    idempotency = {"store": store, "on_store_error": on_store_error, "lock_timeout": "2s"}
    sidecar = sidecar_process({"upstream": {"url": url}, "idempotency": idempotency})

    shots, samples, killed, restarted = await run_outage(http, sidecar, server)

    assert not [s for s in shots if s.status == 0], "the sidecar dropped connections"
    counts = app.snapshot()

    def healthy(shot: Shot) -> bool:  # entirely before the kill or after the recovery
        return shot.ended < killed or shot.started > restarted + 1.0

    by_key: dict[str, list[Shot]] = {}
    for shot in shots:
        by_key.setdefault(shot.key, []).append(shot)
    for key, pair in by_key.items():
        if all(healthy(s) for s in pair):  # protected: once, and the retry is a replay
            assert counts[key] == 1, (key, pair)
            assert [s.replayed for s in pair] == [False, True][: len(pair)], pair
        elif on_store_error == "reject":  # never twice; refused while Redis is gone
            assert counts[key] <= 1, (key, pair)
    if on_store_error == "reject":
        refused = [s for s in shots if s.status == 503]
        assert refused and {s.status for s in shots} == {201, 503}
        assert all(s.content_type == "application/problem+json" for s in refused)
        assert all(s.retry_after == "1" for s in refused)
        assert all(killed <= s.ended and s.started <= restarted + 1.0 for s in refused)
    else:
        assert {s.status for s in shots} == {201}, "pass must forward during the outage"
    assert_readiness_followed_the_outage(samples, killed, restarted)
    assert sidecar.process.poll() is None
