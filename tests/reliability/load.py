"""Client-side load for the fault-injection tests: what was sent, when, and what came back.

``KeyedLoad`` runs workers that each send a covered POST with a fresh ``Idempotency-Key`` and
then the same request again at once (the client's retry), recording every exchange as a ``Shot``.
``ReadinessWatch`` samples ``/readyz`` in the background.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class Shot:
    """One request and its outcome (``status`` 0: no HTTP answer, see ``error``)."""

    key: str
    started: float
    ended: float
    status: int
    replayed: bool
    content_type: str = ""
    retry_after: str | None = None
    error: str | None = None


@dataclass
class KeyedLoad:
    """Workers sending ``POST path`` pairs (first, then an immediate retry) with fresh keys."""

    http: aiohttp.ClientSession
    url: str
    path: str = "/slow/20"
    workers: int = 8
    shots: list[Shot] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the workers."""
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]

    async def stop(self) -> list[Shot]:
        """Let every worker finish its current pair; return every shot."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.shots

    async def send(self, key: str) -> Shot:
        """One covered POST with ``key``."""
        started = time.monotonic()
        try:
            async with self.http.post(
                f"{self.url}{self.path}", data=b'{"n": 1}', headers={"Idempotency-Key": key}
            ) as response:
                await response.read()
                return Shot(
                    key,
                    started,
                    time.monotonic(),
                    response.status,
                    response.headers.get("Idempotent-Replayed") == "true",
                    response.content_type,
                    response.headers.get("Retry-After"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Shot(key, started, time.monotonic(), 0, False, error=repr(exc))

    async def _worker(self, worker: int) -> None:
        sequence = 0
        while not self._stop.is_set():
            key = f"w{worker}-{sequence}"
            sequence += 1
            for _ in range(2):
                self.shots.append(await self.send(key))


@dataclass
class ReadinessWatch:
    """Samples ``GET /readyz`` every ``every`` seconds: ``(time, status, body)`` tuples."""

    http: aiohttp.ClientSession
    admin_url: str
    every: float = 0.1
    samples: list[tuple[float, int, str]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[tuple[float, int, str]]:
        """Stop sampling; return the samples."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.samples

    async def _run(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.admin_url}/readyz") as response:
                    self.samples.append((time.monotonic(), response.status, await response.text()))
            except aiohttp.ClientError as exc:
                self.samples.append((time.monotonic(), 0, repr(exc)))
            await asyncio.sleep(self.every)
