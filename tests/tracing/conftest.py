"""Fixtures of the tracing suite: a real OTLP receiver, a recording upstream, traced sidecars.

The receiver and the upstream are aiohttp apps served from the background loop; sidecars are
``saga-sidecar serve`` subprocesses exporting to the receiver, with a 50 ms batch delay
(``OTEL_BSP_SCHEDULE_DELAY``) so spans arrive while the test waits.

Fixtures:
    receiver        the ``OtlpReceiver``; its ``url`` is the sidecars' ``tracing.endpoint``.
    recorder        the ``Recorder`` upstream (``url``).
    traced_sidecar  ``traced_sidecar(config=None, env=None) -> Sidecar``: a sidecar in front of
                    the recorder, exporting to the receiver.
    client          an ``aiohttp.ClientSession``.

Helpers: ``new_traceparent()`` makes an incoming W3C trace context.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from conftest import Sidecar, Upstream, deep_merge

from tracing.otlp import OtlpReceiver

FAST_BATCHES = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
S = TypeVar("S", OtlpReceiver, "Recorder")


@dataclass(frozen=True)
class Incoming:
    """A W3C trace context a client sends."""

    trace_id: str
    span_id: str

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value (sampled)."""
        return f"00-{self.trace_id}-{self.span_id}-01"


def new_traceparent() -> Incoming:
    """A fresh incoming trace context."""
    return Incoming(secrets.token_hex(16), secrets.token_hex(8))


@dataclass
class Call:
    """One request the recorder received."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Recorder:
    """An upstream app and step service that records every request it gets.

        ``POST /orders`` → 201, ``POST /orders/cancel`` → 200, ``POST /charge`` → 402 (declined),
        ``POST /slow`` → waits ``slow_seconds`` (or until its caller is gone) the first time, then
    200 at once; anything else
        → 200 with the method and path.
    """

    calls: list[Call] = field(default_factory=list)
    slow_seconds: float = 60.0
    url: str = ""
    _slow_seen: bool = False

    def app(self) -> web.Application:
        """The recorder as an aiohttp application."""
        app = web.Application()
        app.router.add_post("/charge", self._declined)
        app.router.add_post("/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._ok)
        return app

    def _record(self, request: web.Request) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.calls.append(Call(request.method, request.path, headers))

    async def _ok(self, request: web.Request) -> web.Response:
        self._record(request)
        status = 201 if request.method == "POST" and request.path == "/orders" else 200
        return web.json_response({"method": request.method, "path": request.path}, status=status)

    async def _declined(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"error": "card declined"}, status=402)

    async def _slow(self, request: web.Request) -> web.Response:
        self._record(request)
        if not self._slow_seen:
            self._slow_seen = True
            deadline = asyncio.get_running_loop().time() + self.slow_seconds
            while asyncio.get_running_loop().time() < deadline:
                if request.transport is None or request.transport.is_closing():
                    break  # the caller is gone (killed): nothing to answer
                await asyncio.sleep(0.05)
        return web.json_response({"slow": "done"})

    def to(self, path: str) -> list[Call]:
        """The calls received on ``path``."""
        return [call for call in self.calls if call.path == path]


def _served(app_in_thread: Callable[..., Upstream], served: S) -> Iterator[S]:
    """Serve ``served.app()`` from the background loop, with its base URL as ``served.url``."""
    upstream = app_in_thread(served.app())
    served.url = upstream.url
    yield served
    upstream.stop()


@pytest.fixture
def receiver(app_in_thread: Callable[..., Upstream]) -> Iterator[OtlpReceiver]:
    """The test's OTLP receiver, on a real port."""
    yield from _served(app_in_thread, OtlpReceiver())


@pytest.fixture
def recorder(app_in_thread: Callable[..., Upstream]) -> Iterator[Recorder]:
    """The test's recording upstream, on a real port."""
    yield from _served(app_in_thread, Recorder())


@pytest.fixture
def traced_sidecar(
    sidecar_process: Callable[..., Sidecar], receiver: OtlpReceiver, recorder: Recorder
) -> Callable[..., Sidecar]:
    """``traced_sidecar(config=None, env=None)``: a traced sidecar in front of the recorder."""

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Sidecar:
        base = {
            "shutdown_grace": "2s",
            "upstream": {"url": recorder.url, "timeout": "5s"},
            "services": {"shop": recorder.url},
            "tracing": {"endpoint": receiver.url},
        }
        return sidecar_process(deep_merge(base, config or {}), FAST_BATCHES if env is None else env)

    return start


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as session:
        yield session
