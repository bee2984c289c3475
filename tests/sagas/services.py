"""The real upstream services saga tests call: they record every call and fail on request.

``FakeServices`` serves one aiohttp app per named service (``inventory``, ``payments``,
``shipping`` ...). Every app appends to ONE shared journal, so a test can assert the order of
calls across services (forward steps, then compensations in reverse). By default a ``POST``
answers ``201 {"id": "<service>-<n>", "received": <body>}`` and any other method ``200``; a test
scripts other answers per ``"METHOD /path-glob"`` with ``plan``: statuses, bodies, headers, a
delay longer than the step's timeout, or a gate the handler waits on.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

_DEFAULT = object()


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: the HTTP status.
        body: the JSON body; left out: the default body of the method.
        headers: extra response headers (``Retry-After`` ...).
        delay: seconds to sleep before answering (past the step's timeout: a timeout).
        gate: an event the handler waits for before answering (the test opens it).
        pieces: send the body in this many writes, 20 ms apart (a slow, chunked answer).
    """

    status: int = 200
    body: Any = _DEFAULT
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    gate: asyncio.Event | None = None
    pieces: int = 1


@dataclass(frozen=True)
class Call:
    """One call a service received, as it arrived."""

    service: str
    method: str
    raw_path: str
    headers: dict[str, str]
    body: Any
    at: float

    @property
    def line(self) -> str:
        """``"service METHOD /raw/path"``, the form call-order assertions use."""
        return f"{self.service} {self.method} {self.raw_path}"

    @property
    def key(self) -> str | None:
        """The call's ``Idempotency-Key`` header."""
        return self.headers.get("idempotency-key")

    def segment(self, index: int) -> str:
        """Path segment ``index`` (0 = the first after ``/``), percent-decoded once."""
        return unquote(self.raw_path.split("?", 1)[0].split("/")[index + 1])


@dataclass
class _Plan:
    pattern: str
    replies: list[Reply]
    then: Reply | None


class FakeServices:
    """Recording, scriptable upstream services sharing one journal."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.urls: dict[str, str] = {}
        self._plans: dict[str, list[_Plan]] = defaultdict(list)
        self._ids: dict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self._arrived: asyncio.Condition | None = None

    def plan(self, service: str, route: str, *replies: Reply, then: Reply | None = None) -> None:
        """Answer calls matching ``route`` on ``service`` with ``replies`` in order.

        Args:
            service: the service name.
            route: ``"METHOD /path"``; the path may hold ``*`` globs (matched on the raw path).
            replies: the next answers, one per matching call.
            then: the answer of every matching call after ``replies`` are used up (default:
                the method's default answer).
        """
        self._plans[service].append(_Plan(route, list(replies), then))

    def always(self, service: str, route: str, reply: Reply) -> None:
        """Answer every call matching ``route`` on ``service`` with ``reply``."""
        self.plan(service, route, then=reply)

    def lines(self) -> list[str]:
        """Every call so far as ``"service METHOD /raw/path"``, in arrival order."""
        return [call.line for call in self.calls]

    def calls_to(self, service: str) -> list[Call]:
        """The calls ``service`` received, in order."""
        return [call for call in self.calls if call.service == service]

    async def wait_for_calls(
        self, count: int, within: float = 5.0, service: str | None = None
    ) -> None:
        """Wait until at least ``count`` calls arrived (to ``service``, when given)."""
        condition = self._condition()

        def arrived() -> bool:
            calls = self.calls if service is None else self.calls_to(service)
            return len(calls) >= count

        async with asyncio.timeout(within), condition:
            await condition.wait_for(arrived)

    def _condition(self) -> asyncio.Condition:
        if self._arrived is None:
            self._arrived = asyncio.Condition()
        return self._arrived

    def app(self, service: str) -> web.Application:
        """The aiohttp application of ``service``."""
        app = web.Application()
        # A sidecar launcher elsewhere that raced for this port probes it for /healthz while
        # it waits: that is not a saga call, so it is answered without being recorded.
        app.router.add_get("/healthz", _not_a_sidecar)
        app.router.add_route("*", "/{tail:.*}", self._handler(service))
        return app

    def _handler(self, service: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = json.loads(raw) if raw else None
            call = Call(
                service,
                request.method,
                request.raw_path,
                {k.lower(): v for k, v in request.headers.items()},
                body,
                time.monotonic(),
            )
            self.calls.append(call)
            condition = self._condition()
            async with condition:
                condition.notify_all()
            return await self._answer(service, call, request)

        return handle

    def _next_reply(self, service: str, call: Call) -> Reply | None:
        for plan in self._plans[service]:
            if fnmatch.fnmatchcase(f"{call.method} {call.raw_path}", plan.pattern):
                return plan.replies.pop(0) if plan.replies else plan.then
        return None

    async def _answer(self, service: str, call: Call, request: web.Request) -> web.StreamResponse:
        reply = self._next_reply(service, call) or Reply(201 if call.method == "POST" else 200)
        if reply.gate is not None:
            await reply.gate.wait()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        if body is _DEFAULT:
            body = self._default_body(service, call, reply.status)
        if reply.pieces == 1:
            return web.json_response(body, status=reply.status, headers=reply.headers)
        return await _stream(request, reply, json.dumps(body).encode())

    def _default_body(self, service: str, call: Call, status: int) -> Any:
        if call.method == "POST" and 200 <= status < 300:
            return {"id": f"{service}-{next(self._ids[service])}", "received": call.body}
        return {"service": service, "status": status, "path": call.raw_path}


async def _stream(request: web.Request, reply: Reply, raw: bytes) -> web.StreamResponse:
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    response.content_type = "application/json"
    await response.prepare(request)
    size = -(-len(raw) // reply.pieces)
    for start in range(0, len(raw), size):
        await response.write(raw[start : start + size])
        await asyncio.sleep(0.02)
    await response.write_eof()
    return response


async def _not_a_sidecar(request: web.Request) -> web.Response:
    return web.Response(status=404, text="a fake saga service, not a sidecar")
