"""The upstream the durability tests put behind saga steps: it records and scripts every call.

``Ledger`` is a real aiohttp app (served from a background thread with ``app_in_thread``, so it
keeps answering while a test blocks on a subprocess). Every call is appended to ``calls`` with
its wall-clock time, path, ``Idempotency-Key`` and ``Saga-Id``. Two calls carrying the same
``Saga-Id`` that are in flight at the same time are recorded in ``overlaps``: a saga executed by
two replicas at once. ``script(path, ...)`` decides how a path answers: after a delay (all calls
or only a key's first), held until a gate opens, or failing a number of times first; and
whether it first posts an outcome to the call's ``Saga-Callback`` URL (an awaiting step's
service that calls back before it answers the call itself).

``Ledger(dedup=True)`` is an idempotent service: the first call of each ``Idempotency-Key``
takes effect (``effects(key)`` counts them), and every later call with that key, in flight or
after, gets the first one's answer (marked ``Idempotent-Replayed: true``) without taking effect;
``effects_on(path, saga_id)`` counts the effects of a saga's calls to ``path`` over all keys.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass(frozen=True)
class Call:
    """One request the ledger received."""

    at: float
    method: str
    path: str
    key: str | None
    saga_id: str | None
    body: Any
    callback: str | None = None
    """The ``Saga-Callback`` URL the call carried (an awaiting step's)."""


@dataclass
class Script:
    """How one path answers.

    Attributes:
        status: the final answer's status.
        delay: seconds every call waits before answering.
        first_delay: seconds the first call of each key waits instead of ``delay``.
        gate: when set, calls wait until it is set (a "stuck" upstream the test releases).
        failures: the first N calls of each key answer ``fail_status`` instead.
        fail_status: the status of those failures.
        fail_headers: headers of those failures (e.g. ``Retry-After``).
        call_back: when set, every call carrying a ``Saga-Callback`` URL first posts this body
            there (the answer's status joins ``Ledger.callback_answers``), then answers.
    """

    status: int = 200
    delay: float = 0.0
    first_delay: float | None = None
    gate: threading.Event | None = None
    failures: int = 0
    fail_status: int = 503
    fail_headers: dict[str, str] = field(default_factory=dict)
    call_back: dict[str, Any] | None = None


class Ledger:
    """Records every call; answers as scripted per path (default: 200 at once)."""

    def __init__(self, *, dedup: bool = False) -> None:
        self.dedup = dedup
        self.calls: list[Call] = []
        self._effects: Counter[str] = Counter()
        self._answers: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self.overlaps: list[tuple[str, str]] = []
        self.callback_answers: list[int] = []
        """The statuses the sidecars answered the callbacks of ``Script.call_back``."""
        self.scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._per_key: Counter[tuple[str, str | None]] = Counter()

    def script(self, path: str, **settings: Any) -> Script:
        """Set how ``path`` answers (see ``Script``); returns the script."""
        self.scripts[path] = Script(**settings)
        return self.scripts[path]

    def app(self) -> web.Application:
        """The application to serve."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def calls_to(self, path: str, saga_id: str | None = None) -> list[Call]:
        """The calls to ``path`` (of one saga when ``saga_id`` is given), in arrival order."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.path == path and (saga_id is None or c.saga_id == saga_id)
            ]

    def of_saga(self, saga_id: str) -> list[Call]:
        """Every call carrying ``Saga-Id: saga_id``, in arrival order."""
        with self._lock:
            return [c for c in self.calls if c.saga_id == saga_id]

    def executions(self, key: str) -> int:
        """How many calls carrying ``Idempotency-Key: key`` reached this app."""
        with self._lock:
            return sum(1 for c in self.calls if c.key == key)

    def effects(self, key: str) -> int:
        """How many calls with ``Idempotency-Key: key`` took effect (``dedup``: at most one)."""
        with self._lock:
            return self._effects[key]

    def effects_on(self, path: str, saga_id: str) -> int:
        """How many calls to ``path`` of one saga took effect, whatever key they carried (a
        resumed run re-sending with a new key counts twice)."""
        with self._lock:
            keys = {c.key or "" for c in self.calls if c.path == path and c.saga_id == saga_id}
            return sum(self._effects[key] for key in keys)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        call = Call(
            at=time.time(),
            method=request.method,
            path=request.path,
            key=request.headers.get("Idempotency-Key"),
            saga_id=request.headers.get("Saga-Id"),
            body=body,
            callback=request.headers.get("Saga-Callback"),
        )
        with self._lock:
            self.calls.append(call)
            self._per_key[(call.path, call.key)] += 1
            nth = self._per_key[(call.path, call.key)]
            if call.saga_id is not None:
                if self._in_flight[call.saga_id]:
                    self.overlaps.append((call.saga_id, call.path))
                self._in_flight[call.saga_id] += 1
        try:
            if self.dedup and call.key is not None:
                return await self._once(call, nth, call.key)
            with self._lock:
                self._effects[call.key or ""] += 1
            return await self._answer(call, nth)
        finally:
            if call.saga_id is not None:
                with self._lock:
                    self._in_flight[call.saga_id] -= 1

    async def _answer(self, call: Call, nth: int) -> web.Response:
        script = self.scripts.get(call.path, Script())
        if script.call_back is not None and call.callback is not None:
            await self._call_back(call.callback, script.call_back)
        delay = script.first_delay if nth == 1 and script.first_delay is not None else script.delay
        await asyncio.sleep(delay)
        # The gate is set from the test's thread, so it is a threading.Event, polled here.
        while script.gate is not None and not script.gate.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if nth <= script.failures:
            return web.json_response(
                {"failure": nth}, status=script.fail_status, headers=script.fail_headers
            )
        return web.json_response(
            {"id": f"{call.path.strip('/').replace('/', '-')}-{nth}", "key": call.key},
            status=script.status,
        )

    async def _call_back(self, url: str, body: dict[str, Any]) -> None:
        """Post ``body`` to the callback ``url`` while the call is still unanswered."""
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as answer:
            with self._lock:
                self.callback_answers.append(answer.status)

    async def _once(self, call: Call, nth: int, key: str) -> web.Response:
        """The first call of ``key`` takes effect; the others get its answer."""
        with self._lock:
            first = self._answers.get(key)
            if first is None:
                self._answers[key] = asyncio.get_running_loop().create_future()
                self._effects[key] += 1
        if first is not None:
            status, body = await asyncio.shield(first)
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        response = await self._answer(call, nth)
        assert isinstance(response.body, bytes)
        self._answers[key].set_result((response.status, json.loads(response.body)))
        return response
