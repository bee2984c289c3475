"""Headless Chromium for the dashboard tests: dump a page's DOM, take a screenshot, or drive a tab.

Chromium runs as a subprocess (``--headless --no-sandbox --disable-gpu
--disable-background-networking``) with a throwaway profile, awaited without blocking the event
loop that serves the page. A missing Chromium fails the test with the command that installs it.
``open_page`` keeps Chromium running and drives one tab over the DevTools protocol (a WebSocket,
aiohttp's client): evaluate script in the page, click, and wait for what the page shows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"


def chromium_binary() -> str:
    """The path of the Chromium executable; fails the calling test when there is none."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"headless Chromium is required for the dashboard tests but none of {CANDIDATES} is "
        f"on PATH; install it with: {INSTALL_HINT}",
        pytrace=False,
    )


FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-first-run",
)
DEVTOOLS = re.compile(rb"DevTools listening on ws://([^/]+)/")


async def run_chromium(*args: str) -> str:
    """Run headless Chromium with ``args``; return its stdout (raise with stderr on failure)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    if process.returncode != 0:
        raise AssertionError(f"chromium exited {process.returncode}: {stderr.decode()[-2000:]}")
    return stdout.decode()


async def dump_dom(url: str) -> str:
    """The DOM of ``url`` after Chromium loaded it, serialised as HTML."""
    return await run_chromium("--dump-dom", url)


async def screenshot(url: str, path: Path, width: int = 1280, height: int = 860) -> Path:
    """A PNG screenshot of ``url`` at ``width`` x ``height``."""
    await run_chromium(
        "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={path}", url
    )
    return path


class Tab:
    """One Chromium tab driven over the DevTools protocol (one command at a time)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command; return its result (events in between are dropped)."""
        command_id = next(self.ids)
        await self.socket.send_json({"id": command_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                message = json.loads((await self.socket.receive()).data)
                if message.get("id") != command_id:
                    continue
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, within: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        async with asyncio.timeout(within):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        """Load ``url`` and wait until the document is complete."""
        await self.send("Page.navigate", url=url)
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        )


async def devtools_address(stderr: asyncio.StreamReader) -> str:
    """The ``host:port`` Chromium's DevTools listen on, read from its log."""
    async with asyncio.timeout(30):
        while line := await stderr.readline():
            found = DEVTOOLS.search(line)
            if found:
                return found.group(1).decode()
    raise AssertionError("chromium exited before its DevTools listened")


@asynccontextmanager
async def open_page(url: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[Tab]:
    """Chromium showing ``url`` in a tab, driven by the yielded ``Tab``; ``headers`` are sent
    with every request of the tab (as an authenticating proxy in front of the admin listener
    would add them)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            address = await devtools_address(process.stderr)
            drain = asyncio.create_task(process.stderr.read())  # a full pipe would stall it
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{address}/json/list") as response:
                    pages = [t for t in await response.json() if t["type"] == "page"]
                async with session.ws_connect(pages[0]["webSocketDebuggerUrl"]) as socket:
                    tab = Tab(socket)
                    await tab.send("Network.enable")
                    if headers:
                        await tab.send("Network.setExtraHTTPHeaders", headers=dict(headers))
                    await tab.goto(url)
                    yield tab
        finally:
            process.kill()
            await process.wait()
            if "drain" in locals():
                await drain
