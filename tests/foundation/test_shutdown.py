"""Process lifecycle: SIGTERM/SIGINT drain in-flight requests within shutdown_grace and exit 0;
a listener that cannot bind exits 1 with a one-line reason."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.resources import new_task_scheduler

if TYPE_CHECKING:
    from conftest import Sidecar


class SlowApp:
    """An upstream whose ``/slow`` answers after ``delay`` seconds and reports its arrivals."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/fast", self.fast)

    async def slow(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await asyncio.sleep(self.delay)
        return web.Response(text="finally")

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")


async def start(
    upstream_server: Callable[..., Any],
    sidecar_process: Callable[..., Sidecar],
    delay: float,
    grace: str = "5s",
) -> tuple[SlowApp, Sidecar]:
    slow = SlowApp(delay)
    upstream = await upstream_server(slow.app, handler_cancellation=True)
    sidecar = sidecar_process({"upstream": {"url": upstream.url}, "shutdown_grace": grace})
    return slow, sidecar


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def wait_until_refused(sidecar: Sidecar, within: float) -> None:
    url = URL(sidecar.url)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(url.host, url.port)
        except (ConnectionRefusedError, ConnectionResetError):  # reset: closed while connecting
            return
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{sidecar.url} still accepts connections {within}s after the signal")


async def wait_for_exit(sidecar: Sidecar, within: float) -> int:
    deadline = time.monotonic() + within
    while sidecar.process.poll() is None:
        assert time.monotonic() < deadline, f"sidecar still running:\n{sidecar.log_text()}"
        await asyncio.sleep(0.02)
    return sidecar.process.returncode


@pytest.mark.parametrize(("signum", "delay"), [(signal.SIGTERM, 1.5), (signal.SIGINT, 0.6)])
async def test_stop_signal_drains_the_in_flight_request_then_exits_0(
    upstream_server: Callable[..., Any],
    sidecar_process: Callable[..., Sidecar],
    signum: int,
    delay: float,
) -> None:
    slow, sidecar = await start(upstream_server, sidecar_process, delay=delay)
    in_flight = asyncio.create_task(get_text(f"{sidecar.url}/slow"))
    await asyncio.wait_for(slow.arrived.wait(), 5)
    signalled = time.monotonic()
    sidecar.signal(signum)
    await wait_until_refused(sidecar, within=1.0)
    assert not in_flight.done()
    assert await asyncio.wait_for(in_flight, 5) == (200, "finally")
    assert await wait_for_exit(sidecar, within=3) == 0
    assert time.monotonic() - signalled < 3.5
    messages = [record.get("msg") for record in sidecar.log_records()]
    assert "stop signal received, draining" in messages
    assert messages[-1] == "stopped"


async def test_readyz_turns_503_while_draining_so_traffic_moves_elsewhere(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar]
) -> None:
    slow, sidecar = await start(upstream_server, sidecar_process, delay=1.5)
    status, _ = await get_text(f"{sidecar.admin_url}/readyz")
    assert status == 200
    in_flight = asyncio.create_task(get_text(f"{sidecar.url}/slow"))
    await asyncio.wait_for(slow.arrived.wait(), 5)
    sidecar.signal(signal.SIGTERM)
    await wait_until_refused(sidecar, within=1.0)
    status, text = await get_text(f"{sidecar.admin_url}/readyz")
    assert status == 503
    assert "shutting down" in text
    assert await asyncio.wait_for(in_flight, 5) == (200, "finally")
    assert await wait_for_exit(sidecar, within=3) == 0


async def test_idle_sidecar_exits_at_once_even_with_idle_keep_alive_clients(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar]
) -> None:
    _, sidecar = await start(upstream_server, sidecar_process, delay=0)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sidecar.url}/fast") as response:
            assert await response.text() == "fast"
        signalled = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert await wait_for_exit(sidecar, within=3) == 0
    assert time.monotonic() - signalled < 1.5


async def test_request_outliving_shutdown_grace_is_cut_and_the_exit_is_still_0(
    upstream_server: Callable[..., Any], sidecar_process: Callable[..., Sidecar]
) -> None:
    slow, sidecar = await start(upstream_server, sidecar_process, delay=10, grace="1s")
    in_flight = asyncio.create_task(get_text(f"{sidecar.url}/slow"))
    await asyncio.wait_for(slow.arrived.wait(), 5)
    signalled = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert await wait_for_exit(sidecar, within=4) == 0
    assert 0.9 < time.monotonic() - signalled < 1.9
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(in_flight, 5)


def test_serve_on_a_busy_port_exits_1_with_a_one_line_reason(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        config = tmp_path / "sidecar.yaml"
        config.write_text(
            f'listen: "{listen}"\nadmin: {{listen: "127.0.0.1:0"}}\n'
            'upstream: {url: "http://127.0.0.1:9"}\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"saga-sidecar: cannot listen on {listen}: ")
    assert "Traceback" not in result.stderr


async def test_a_task_cut_off_at_the_end_of_the_grace_still_finishes_its_cleanup() -> None:
    """A saga run cut off by the shutdown releases its lease in a ``finally``: one store round
    trip, which must not be cancelled a second time (the saga would stay owned by a process
    that is gone until its lease runs out, instead of being resumed elsewhere at once)."""
    scheduler = new_task_scheduler()
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def saga_run() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.3)  # the release's round trip on a loaded machine
            cleaned_up.set()

    await scheduler.spawn(saga_run())
    await started.wait()
    await scheduler.wait_and_close(timeout=0.05)
    assert cleaned_up.is_set()
