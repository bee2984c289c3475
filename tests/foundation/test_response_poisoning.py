"""An app's stray bytes never become another client's answer (response poisoning).

An app that sends a body after a HEAD answer (``http.server`` with ``do_HEAD = do_GET``) or bytes
after a 204 leaves those bytes on the connection. If the connection went back to the pool, the
next request sent on it would read them as *its* answer, and a keyed POST would store that answer
for the key's whole TTL. The hostile app below hides a complete, well-framed answer
(``poisoned``) in its stray bytes, sends them at once or 300 ms later, and answers every victim
request with the victim's own number. Victims (GETs and keyed POSTs) run next to the attackers,
through a real sidecar process and through both saga step transports: every victim must get its
own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest

from foundation.rawserver import Peer, StartServer, response
from proxy.sagas.step_transport import UpstreamStepTransport
from saga_runner.errors import SendFailure
from saga_runner.transport import AiohttpTransport, StepTransport

if TYPE_CHECKING:
    from conftest import Sidecar

POISON = response("200 OK", b"poisoned")
LATE = 0.3  # seconds between a bodiless answer and its stray bytes, in the "late" variants
RUN_FOR = 1.5  # seconds of attack per variant
VICTIMS = 8
ATTACKERS = 2

# (attacker's method, attacker's path) per variant; the app knows what to do by the path.
VARIANTS = {
    "head-body-at-once": ("HEAD", "/head-now"),
    "head-body-300ms-later": ("HEAD", "/head-late"),
    "bytes-after-204-at-once": ("DELETE", "/nocontent-now"),
    "bytes-after-204-300ms-later": ("DELETE", "/nocontent-late"),
}


async def _send_quietly(peer: Peer, *parts: bytes) -> None:
    """Write ``parts``; a client that already closed the connection is not an error here."""
    with contextlib.suppress(ConnectionError):
        for part in parts:
            peer.writer.write(part)
            await peer.writer.drain()


async def _stray(peer: Peer, head: bytes, late: bool) -> None:
    """Answer with ``head`` alone, then send the poison at once or ``LATE`` seconds after."""
    if not late:
        await _send_quietly(peer, head, POISON)
        return
    await _send_quietly(peer, head)
    await asyncio.sleep(LATE)
    await _send_quietly(peer, POISON)


async def hostile_app(peer: Peer) -> None:
    """Victims get ``own:N``; the attack paths get a bodiless answer followed by stray bytes."""
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(POISON)
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    while True:
        try:
            request = await peer.request()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        if request is None:
            return
        target = request.split(b" ", 2)[1]
        if target.startswith(b"/victim/"):
            await _send_quietly(
                peer, response("200 OK", b"own:" + target.removeprefix(b"/victim/"))
            )
        elif target in (b"/head-now", b"/head-late"):
            await _stray(peer, head_answer, late=target == b"/head-late")
        elif target in (b"/nocontent-now", b"/nocontent-late"):
            await _stray(peer, no_content, late=target == b"/nocontent-late")
        else:
            await _send_quietly(peer, response("404 Not Found"))


Victim = Callable[[int], Awaitable[tuple[int, bytes]]]
Attacker = Callable[[], Awaitable[None]]


async def run_attack(victim: Victim, attacker: Attacker) -> list[tuple[int, int, bytes]]:
    """Run attackers and victims together for ``RUN_FOR`` seconds; return the wrong answers
    as (victim number, status, body).

    Each attacker sends a victim request right after each attack too, so the connection the
    attack just freed is the one most likely to be taken next (the pools are LIFO).
    """
    numbers = itertools.count()
    wrong: list[tuple[int, int, bytes]] = []
    answered = 0
    deadline = time.monotonic() + RUN_FOR

    async def one_victim() -> None:
        nonlocal answered
        number = next(numbers)
        status, body = await victim(number)
        answered += 1
        if (status, body) != (200, b"own:%d" % number):
            wrong.append((number, status, body))

    async def victims() -> None:
        while time.monotonic() < deadline:
            await one_victim()

    async def attackers() -> None:
        while time.monotonic() < deadline:
            await attacker()
            await one_victim()

    await asyncio.gather(
        *(victims() for _ in range(VICTIMS)), *(attackers() for _ in range(ATTACKERS))
    )
    assert answered > 50, "too few victim requests ran to show anything"
    return wrong


@pytest.mark.parametrize("variant", VARIANTS)
async def test_stray_bytes_after_a_bodiless_answer_never_reach_another_client(
    raw_server: StartServer,
    sidecar_process: Callable[..., Sidecar],
    client: aiohttp.ClientSession,
    variant: str,
) -> None:
    app = await raw_server(hostile_app)
    sidecar = sidecar_process({"upstream": {"url": app.url}, "log": {"level": "error"}})
    method, path = VARIANTS[variant]

    async def victim(number: int) -> tuple[int, bytes]:
        url = f"{sidecar.url}/victim/{number}"
        if number % 2:  # a keyed POST: a poisoned answer would be stored and replayed
            request = client.post(url, data=b"pay", headers={"Idempotency-Key": f"k-{number}"})
        else:
            request = client.get(url)
        async with request as answer:
            return answer.status, await answer.read()

    async def attacker() -> None:
        async with client.request(method, f"{sidecar.url}{path}") as answer:
            await answer.read()

    assert await run_attack(victim, attacker) == []


@pytest.mark.parametrize("transport_name", ["aiohttp", "upstream"])
@pytest.mark.parametrize("variant", VARIANTS)
async def test_step_calls_never_read_another_calls_stray_bytes(
    raw_server: StartServer, variant: str, transport_name: str
) -> None:
    app = await raw_server(hostile_app)
    transport: StepTransport = (
        AiohttpTransport() if transport_name == "aiohttp" else UpstreamStepTransport()
    )
    method, path = VARIANTS[variant]

    async def victim(number: int) -> tuple[int, bytes]:
        answer = await transport.exchange(
            "GET", f"{app.url}/victim/{number}", {}, None, seconds=5.0, limit=1024
        )
        return answer.status, answer.body

    async def attacker() -> None:
        with contextlib.suppress(SendFailure):  # the attacker's own call may fail: its business
            await transport.exchange(method, f"{app.url}{path}", {}, None, seconds=5.0, limit=1024)

    try:
        assert await run_attack(victim, attacker) == []
    finally:
        await transport.close()
