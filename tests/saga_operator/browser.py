"""Headless Chromium for the dashboard tests: dump a page's DOM, or take a screenshot.

Chromium runs as a subprocess (``--headless --no-sandbox --disable-gpu
--disable-background-networking``) with a throwaway profile, awaited without blocking the event
loop that serves the page. A missing Chromium fails the test with the command that installs it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

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


async def run_chromium(*args: str) -> str:
    """Run headless Chromium with ``args``; return its stdout (raise with stderr on failure)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--no-first-run",
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
