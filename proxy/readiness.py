"""Readiness: the named dependencies (stores) ``/readyz`` pings before answering 200.

Once the process has been told to stop it is never ready again, so a load balancer takes it out
of rotation while in-flight requests drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Probe = Callable[[], Awaitable[object]]


class Readiness:
    """A registry of named probes; the app is ready when every probe answers in time."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._probes: dict[str, Probe] = {}
        self._draining = False

    def mark_draining(self) -> None:
        """The process is shutting down: report not ready from now on."""
        self._draining = True

    def register(self, name: str, probe: Probe) -> None:
        """Add a dependency to check; ``probe`` raises (or times out) when it is not usable."""
        self._probes[name] = probe

    async def failing(self) -> dict[str, str]:
        """Return ``{name: reason}`` for every dependency that does not answer."""
        if self._draining:
            return {"sidecar": "shutting down, draining in-flight requests"}
        names = list(self._probes)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._probes[n](), self.timeout) for n in names),
            return_exceptions=True,
        )
        return {
            name: (str(result) or type(result).__name__)
            for name, result in zip(names, results, strict=True)
            if isinstance(result, BaseException)
        }
