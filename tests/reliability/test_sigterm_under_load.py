"""SIGTERM under load: every request in flight finishes (plain and covered alike), no new
connection is accepted, and the process exits 0 within ``shutdown_grace``. (One request in
flight, SIGINT and a request outliving the grace are in tests/foundation/test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
from conftest import Sidecar
from yarl import URL

from reliability.conftest import eventually
from reliability.services import KeyedApp

IN_FLIGHT = 40
GRACE = 4.0


async def call(http: aiohttp.ClientSession, url: str, key: str | None) -> tuple[int, bytes]:
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(f"{url}/slow/1500", data=b"{}", headers=headers) as response:
        return response.status, await response.read()


async def refused(url: str) -> bool:
    """Whether a new TCP connection to ``url`` is refused."""
    try:
        _, writer = await asyncio.open_connection(URL(url).host, URL(url).port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_sigterm_under_load_finishes_every_request_in_flight_and_exits_within_the_grace(
    sidecar_process: Callable[..., Sidecar],
    keyed: tuple[KeyedApp, str],
    http: aiohttp.ClientSession,
) -> None:
    app, url = keyed
    sidecar = sidecar_process(
        {"upstream": {"url": url}, "shutdown_grace": f"{GRACE:g}s",
         "idempotency": {"store": "memory://"}}
    )  # fmt: skip
    keys = [f"drain-{n}" if n % 2 else None for n in range(IN_FLIGHT)]
    calls = [asyncio.create_task(call(http, sidecar.url, key)) for key in keys]
    await eventually(lambda: app.paths["/slow/1500"] == IN_FLIGHT, "every request in flight")

    signalled = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    await eventually(lambda: refused(sidecar.url), "new connections refused", within=1.0)
    answers = await asyncio.gather(*calls)
    await eventually(lambda: sidecar.process.poll() is not None, "exit", within=GRACE + 2)

    assert [status for status, _ in answers] == [201] * IN_FLIGHT
    assert all(b'"done": true' in body for _, body in answers)
    assert sidecar.process.returncode == 0
    assert time.monotonic() - signalled < GRACE
    assert app.paths["/slow/1500"] == IN_FLIGHT
