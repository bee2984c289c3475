"""The TCC hazard a saga-sidecar in front of a service guards: a try that arrives after its
cancel is refused, because it carries the same step key as the try the service already ran.

Real processes: the TCC saga runs in a saga-sidecar (``cluster``); its service is a second
saga-sidecar (Idempotency-Key protection, memory store) in front of the recording app
(``Ledger``). Between the two sits ``LateNetwork``, a forwarding proxy that holds the try's
second attempt (a retry after a timeout, same key) until the cancel has been answered: the
late try then reaches the service's sidecar after the cancel, which answers it from its store
without calling the app. The app sees one try, then the cancel, and no try after it.

The late try gets the stored answer of the first (``Idempotent-Replayed: true``) when that one
has finished, or ``409`` (in flight) while it still runs; either way it is not run again. The
demo accounts service shows what a TCC service must do itself for the hazards a sidecar
cannot see: a cancel of a hold it never saw succeeds (null cancel) and a try after it is
refused (hanging).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Sidecar, Upstream
from sagas.test_sidecar_process import demo_services

from durability.conftest import Db, SagaCluster, saga
from durability.ledger import Ledger

CANCEL_AFTER = {"attempts": 2, "backoff": "10ms", "multiplier": 1, "max_backoff": "10ms"}


@dataclass
class LateNetwork:
    """Forwards everything to ``target``; a try's repeat waits until a cancel was answered.

    ``late`` holds what the target answered each held try: ``(status, Idempotent-Replayed)``.
    """

    target: str
    late: list[tuple[int, str | None]] = field(default_factory=list)
    tries: Counter[str] = field(default_factory=Counter)
    cancelled: asyncio.Event | None = None

    def app(self) -> web.Application:
        """The proxy, its client session closed with the app."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.cleanup_ctx.append(self._session)
        return app

    async def _session(self, app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession()
        self.cancelled = asyncio.Event()
        yield
        await self.session.close()

    async def forward(self, request: web.Request) -> web.Response:
        assert self.cancelled is not None
        key = request.headers.get("Idempotency-Key", "")
        held = False
        if key.endswith(":try"):
            self.tries[key] += 1
            held = self.tries[key] > 1
            if held:
                await self.cancelled.wait()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self.session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as answer:
            body = await answer.read()
            if held:
                self.late.append((answer.status, answer.headers.get("Idempotent-Replayed")))
            if key.endswith(":cancel") and answer.status < 300:
                self.cancelled.set()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)


@pytest.fixture
def network(
    cluster: SagaCluster,
    sidecar_process: Callable[..., Sidecar],
    app_in_thread: Callable[..., Upstream],
) -> Iterator[LateNetwork]:
    """The service's own sidecar in front of the ledger, reached through ``LateNetwork``."""
    front = sidecar_process(
        {"shutdown_grace": "1s", "upstream": {"url": cluster.ledger_url},
         "idempotency": {"store": "memory://"}}
    )  # fmt: skip
    late = LateNetwork(front.url)
    upstream = app_in_thread(late.app())
    cluster.services["accounts"] = upstream.url
    yield late
    upstream.stop()


def hold_saga() -> dict[str, Any]:
    """A TCC saga of one step whose try times out after 500 ms, twice, then is cancelled."""

    def call(verb: str) -> dict[str, Any]:
        return {"service": "accounts", "method": "POST", "path": f"/hold/{verb}"}

    doc = saga(
        "hold",
        [
            {
                "name": "hold",
                "try": call("try"),
                "confirm": call("confirm"),
                "cancel": call("cancel"),
                "retry": CANCEL_AFTER,
                "timeout": "500ms",
            }
        ],
    )
    doc["kind"] = "tcc"
    return doc


@pytest.mark.parametrize(
    ("first_try_takes", "late_answer"),
    [
        pytest.param(0.8, (200, "true"), id="first-try-done:replayed"),
        pytest.param(3.0, (409, None), id="first-try-running:refused-in-flight"),
    ],
)
async def test_a_try_delayed_past_its_cancel_is_refused_by_the_services_sidecar(
    cluster: SagaCluster,
    ledger: Ledger,
    network: LateNetwork,
    pg: Db,
    http: aiohttp.ClientSession,
    first_try_takes: float,
    late_answer: tuple[int, str | None],
) -> None:
    # The first try runs at the app, but answers after the try's 500 ms timeout: done before
    # the late try comes (its answer is replayed), or still running then (409, in flight).
    ledger.script("/hold/try", first_delay=first_try_takes)
    cluster.write_saga(hold_saga())
    sidecar = cluster.start()
    saga_id = await cluster.trigger(http, sidecar, "hold", {"order": "H-1"})

    row = await pg.wait_status(saga_id)
    await asyncio.sleep(0.3)  # the late try's answer

    assert row["status"] == "compensated"
    assert network.tries[f"{saga_id}:hold:try"] == 2, "the try's retry was held back"
    assert network.late == [late_answer], "answered by the service's sidecar, not run"
    assert [c.path for c in ledger.of_saga(saga_id)] == ["/hold/try", "/hold/cancel"]
    assert ledger.executions(f"{saga_id}:hold:try") == 1
    attempts = [(a["kind"], a["status_code"]) for a in await pg.attempts(saga_id)]
    assert attempts == [("try", None), ("try", None), ("cancel", 200)], "both tries timed out"


async def test_the_demo_accounts_answer_a_null_cancel_and_refuse_a_try_after_it(
    app_in_thread: Callable[..., Upstream], http: aiohttp.ClientSession
) -> None:
    payments = app_in_thread(demo_services().payments_app())
    hold = f"{payments.url}/accounts/acc-1/holds/saga-1"

    async with http.delete(hold) as cancel:
        assert cancel.status == 200, "a cancel of a hold never seen succeeds"
    async with http.put(hold, json={"amount": 50, "side": "debit"}) as late_try:
        assert late_try.status == 409, "a try after its cancel is refused"
        assert (await late_try.json())["status"] == "cancelled"
    async with http.get(f"{payments.url}/accounts") as response:
        accounts = await response.json()
    assert accounts["balances"]["acc-1"] == 500
    assert [(h["hold"], h["status"]) for h in accounts["holds"]] == [("saga-1", "cancelled")]
