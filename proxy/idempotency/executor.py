"""The seam between the idempotency guard and what runs a covered request: the ``Executor``.

The guard reads a covered request's body whole (to fingerprint it), takes the key's lock, and
then hands the request to the executor its route was given: ``run(call, max_body)`` yields the
``Answer`` (what to store, and the response to give the client), ``run_unprotected(call)``
answers it without protection (``on_store_error: pass``). The guard knows nothing about how a
request is executed: the catch-all route forwards it upstream (``proxy.forward_executor``), a
saga trigger starts its saga (``proxy.sagas.routes``), and any other aiohttp handler runs as a
``LocalHandler``, whose in-memory response is captured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from proxy.aiohttp_internals import keep_read_body
from proxy.problems import problem_for_exception

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class CoveredRequest:
    """A covered request with its body read whole: what executing it needs."""

    request: web.Request
    body: bytes
    fingerprint: str


@dataclass
class Answer:
    """What the app answered: enough to store it, and the response to give the client.

    ``body`` is None when it was not captured whole (too large, cut short, or already sent).
    ``ready`` is the response to return as is; ``stream`` sends a large body still arriving.
    ``transient``: the answer describes a state that will change (a sync saga still running),
    so it is never stored; the key is released and a retry gets the real outcome later.
    """

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | None
    ready: web.StreamResponse | None = None
    stream: Handler | None = None
    transient: bool = False

    async def respond(self, request: web.Request) -> web.StreamResponse:
        """The client's response: the ready one, or the large body streamed now."""
        if self.stream is not None:
            return await self.stream(request)
        if self.ready is None:
            raise RuntimeError("an answer without a response")
        return self.ready


class Executor(Protocol):
    """Runs a covered request for the idempotency guard (see the module docstring)."""

    def run(self, call: CoveredRequest, max_body: int) -> AbstractAsyncContextManager[Answer]:
        """Execute ``call`` once; yield its answer, its body captured up to ``max_body`` bytes.

        Raises:
            UpstreamError: the request was (``sent``) or was not delivered, and no answer came.
        """
        ...

    async def run_unprotected(self, call: CoveredRequest) -> web.StreamResponse:
        """Execute ``call`` without storing anything (the store is unavailable)."""
        ...


def captured(response: web.StreamResponse, max_body: int, *, transient: bool = False) -> Answer:
    """The answer a local handler produced: its body is captured when held in memory."""
    body = response.body if isinstance(response, web.Response) else None
    whole = isinstance(body, bytes) and len(body) <= max_body and not response.prepared
    return Answer(
        status=response.status,
        reason=response.reason,
        headers=CIMultiDict(response.headers),
        body=body if whole and isinstance(body, bytes) else None,
        ready=response,
        transient=transient,
    )


class LocalHandler:
    """Any aiohttp handler as an executor: it reads the body already read through ``request``."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    @asynccontextmanager
    async def run(self, call: CoveredRequest, max_body: int) -> AsyncIterator[Answer]:
        """Run the handler and yield its answer (HTTP errors become problems)."""
        try:
            response = await self.run_unprotected(call)
        except web.HTTPException as exc:
            response = problem_for_exception(exc)
        yield captured(response, max_body)

    async def run_unprotected(self, call: CoveredRequest) -> web.StreamResponse:
        """Run the handler on ``call``'s request."""
        keep_read_body(call.request, call.body)
        return await self.handler(call.request)
